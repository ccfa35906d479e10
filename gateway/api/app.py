"""The FastAPI application: routers, and the error → OperationOutcome / 4xx translation at the edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.api import admin, fhir, ingest, sandbox
from gateway.api.responses import fhir_response
from gateway.errors import GatewayError
from gateway.fhir.outcome import from_error, operation_outcome
from gateway.runtime import Runtime
from gateway.web.mount import install as install_pages

logger = logging.getLogger(__name__)


def create_app(runtime: Runtime, *, start_services: bool = True) -> FastAPI:
    """``start_services`` starts the MLLP listener and the delivery worker with the app (``gateway serve``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sampler = None
        if start_services:
            await runtime.start()
            sampler = asyncio.create_task(app.state.live.run(), name="live-sampler")
        try:
            yield
        finally:
            if start_services:
                app.state.live.stop()
                if sampler is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                await runtime.stop()

    app = FastAPI(
        title="HL7 v2 → FHIR gateway",
        version=__version__,
        description="IHE PAM France ADT feeds in, FHIR R4 Patient/Encounter and Subscriptions out.",
        lifespan=lifespan,
        docs_url=None,  # served by gateway.web from local assets (no CDN)
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.include_router(ingest.router)
    app.include_router(fhir.router)
    app.include_router(admin.router)
    app.include_router(sandbox.router)
    app.include_router(sandbox.store_router)
    install_pages(app)

    @app.get("/health", tags=["ops"], summary="Liveness and database reachability")
    async def health() -> Response:
        try:
            with runtime.db.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            logger.exception("health check: database unreachable")
            return Response('{"status":"unavailable"}', status_code=503, media_type="application/json")
        return Response('{"status":"ok"}', media_type="application/json")

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    _install_error_handlers(app)
    return app


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        status, body = from_error(exc)
        return fhir_response(body, status=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        body = operation_outcome(f"invalid request: {where}: {first.get('msg', '')}", code="invalid")
        return fhir_response(body, status=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return fhir_response(operation_outcome(str(exc.detail), code=code), status=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return fhir_response(operation_outcome("internal error", code="exception"), status=500)
