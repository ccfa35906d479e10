"""The sandbox page and the API docs, both working with no internet (assets under ``/static``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from gateway.api.deps import RuntimeDep
from gateway.web.samples import build_samples
from gateway.web.signin import show_session
from gateway.web.templating import render

router = APIRouter(include_in_schema=False)
SWAGGER = "/static/swagger"


@router.get("/sandbox", response_class=HTMLResponse)
async def sandbox_page(request: Request, runtime: RuntimeDep) -> HTMLResponse:
    show_session(request, runtime)
    samples = build_samples(runtime.engine.tables)
    settings = runtime.settings
    limits = {"cpu": settings.sandbox_cpu_seconds, "bytes": settings.sandbox_max_bytes}
    context = {"samples": samples, "limits": limits, "tenants": runtime.sandbox is not None}
    return render(request, "sandbox.html", context)


@router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI from the committed ``swagger-ui-dist`` files; the online validator badge is off."""
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} — API",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
