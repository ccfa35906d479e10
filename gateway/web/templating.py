"""The Jinja2 environment the pages share (autoescaped: message text and names are never markup), and
the headers every page carries: its own assets only (a Content-Security-Policy says so to the browser).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
#: Scripts, styles and fetches from the gateway only; blob: for the report downloads; no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # pages show patient data (console) or the user's own messages
}


def render(request: Request, name: str, context: dict[str, Any]) -> HTMLResponse:
    """``session`` (who is signed in, and the CSRF token the page's forms carry) is in every page's context."""
    context = {"session": getattr(request.state, "session", None), **context}
    response = TEMPLATES.TemplateResponse(request, name, context, headers=PAGE_HEADERS)
    assert isinstance(response, HTMLResponse)
    return response
