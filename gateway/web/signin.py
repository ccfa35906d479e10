"""Signing in on a page: a client's id and secret (or the local ``API_TOKEN``) → a server-side session cookie.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it),
``Secure`` when the gateway is reached over https, and lives ``GATEWAY_SESSION_LIFETIME`` seconds. What the
session may then do is decided where a token's rights are: the rule table and the policy
(``gateway/auth/rules.py``, ``gateway/auth/policy.py``), through ``Gate.session_principal``.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import AccessDep, RuntimeDep
from gateway.api.limits import read_limited
from gateway.auth.sessions import (
    CSRF_FIELD,
    MAX_FORM_BYTES,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_MAX_AGE,
    SignInRequired,
    parse_form,
)
from gateway.config import Settings
from gateway.errors import AuthenticationError
from gateway.runtime import Runtime
from gateway.web.limits import RateLimiter, client_key
from gateway.web.templating import render

router = APIRouter(include_in_schema=False)
#: Sign-in attempts per client address: enough for typing mistakes, too few to guess a secret.
SIGN_IN_PER_MINUTE = 10
SIGN_IN_BURST = 5
DEFAULT_NEXT = "/console/messages"


def _attempts(request: Request) -> RateLimiter:
    """One limiter per app (the event loop makes this first use race-free)."""
    limiter: RateLimiter | None = getattr(request.app.state, "sign_in_limiter", None)
    if limiter is None:
        limiter = RateLimiter(per_minute=SIGN_IN_PER_MINUTE, burst=SIGN_IN_BURST)
        request.app.state.sign_in_limiter = limiter
    return limiter


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of this gateway only (never ``//elsewhere`` nor a URL; browsers
    drop tabs and newlines from URLs, so ``/<TAB>/elsewhere`` would be one: no whitespace or control)."""
    if not value or not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        return DEFAULT_NEXT
    if value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return DEFAULT_NEXT


def _secure(request: Request, settings: Settings) -> bool:
    return request.url.scheme == "https" or settings.public_base().startswith("https://")


def _form(
    request: Request, settings: Settings, *, next_path: str, error: str = "", notice: str = "", status: int = 200
) -> Response:
    nonce, token = request.app.state.runtime.gate.sessions.sign_in_form()
    context = {
        "form_token": token,
        "next": next_path,
        "error": error,
        "notice": notice,
        "api_token": bool(settings.api_token),
        "signed_in": getattr(request.state, "session", None),
    }
    response = render(request, "sign_in.html", context)
    response.status_code = status
    response.set_cookie(
        SIGN_IN_COOKIE,
        nonce,
        max_age=SIGN_IN_MAX_AGE,
        path="/sign-in",
        httponly=True,
        samesite="strict",
        secure=_secure(request, settings),
    )
    return response


def show_session(request: Request, runtime: Runtime) -> None:
    """On an open page (the edge does not look at sessions there), show who is signed in, and give the
    page's scripts the session's CSRF token."""
    session = runtime.gate.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        request.state.session = session


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, runtime: RuntimeDep, next: str = "", signed_out: str = "") -> Response:
    show_session(request, runtime)
    notice = "You are signed out." if signed_out else ""
    return _form(request, runtime.settings, next_path=safe_next(next), notice=notice)


@router.post("/sign-in")
async def sign_in(request: Request, runtime: RuntimeDep) -> Response:
    form = parse_form(request.headers.get("content-type", ""), await read_limited(request, limit=MAX_FORM_BYTES))
    client_id, client_secret = form.get("client_id", "")[:128], form.get("client_secret", "")[:512]
    settings, sessions, target = runtime.settings, runtime.gate.sessions, safe_next(form.get("next"))
    if not sessions.sign_in_form_ok(form.get(CSRF_FIELD, ""), request.cookies.get(SIGN_IN_COOKIE)):
        return _form(request, settings, next_path=target, error="This form has expired: try again.", status=403)
    wait = _attempts(request).allow(client_key(request))
    if wait:
        error = f"Too many attempts: wait {max(1, round(wait))} s."
        response = _form(request, settings, next_path=target, error=error, status=429)
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    try:
        principal = await run_in_threadpool(runtime.gate.sign_in, client_id.strip(), client_secret)
    except AuthenticationError as exc:
        return _form(request, settings, next_path=target, error=exc.message, status=401)
    sessions.close(request.cookies.get(SESSION_COOKIE))  # a new id at each sign-in (no session fixation)
    session = sessions.open(client_id=principal.client_id, name=principal.name, kind=principal.kind)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=int(sessions.lifetime),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request, settings),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")
    return response


@router.post("/sign-out")
async def sign_out(request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    """Ends the session at once (server-side), whatever the browser does with its cookie afterwards."""
    runtime.gate.sessions.close(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/sign-in?signed_out=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def to_sign_in(request: Request, exc: Exception) -> Response:
    """The handler for :class:`SignInRequired`: a page asked for without credentials → the sign-in page."""
    assert isinstance(exc, SignInRequired)
    query = request.url.query
    target = exc.next_path + (f"?{query}" if query else "")
    return RedirectResponse(f"/sign-in?next={quote(target, safe='/')}", status_code=303)
