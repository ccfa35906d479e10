"""The FastAPI application: routers, and the error → OperationOutcome / 4xx translation at the edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway import __version__
from gateway.api import admin, fhir, health, ingest, oauth, sandbox
from gateway.api.deps import AUTHORIZE
from gateway.api.edge import EdgeMiddleware
from gateway.api.errors import outcome_of
from gateway.api.responses import fhir_response
from gateway.api.rest import FhirRestMiddleware
from gateway.db.stats import pool_figures, store_figures
from gateway.errors import AuthenticationError, GatewayError
from gateway.fhir.outcome import operation_outcome
from gateway.metrics import ServiceCollector, ServiceMirror, StoreCollector, aggregated_registry
from gateway.runtime import Runtime
from gateway.web.mount import install as install_pages

logger = logging.getLogger(__name__)
#: Answers smaller than this are not worth compressing.
GZIP_MINIMUM_BYTES = 1000
#: Headers a browser client may read from a cross-origin answer (FHIR versioning and paging need them).
CORS_EXPOSED = ["ETag", "Last-Modified", "Location", "Content-Location", "X-Request-ID"]


def create_app(runtime: Runtime, *, start_services: bool = True, worker: str | None = None) -> FastAPI:
    """``start_services`` starts the MLLP listener and the delivery worker with the app (``gateway serve``).

    ``worker``: this app is that worker of ``gateway serve --workers`` (its index): ``/metrics`` then sums
    every worker's metrics (``gateway.metrics``, multiprocess mode), whichever worker the scrape reaches.
    """
    mirror = (
        ServiceMirror(worker=worker, mllp=lambda: runtime.mllp, delivery=lambda: runtime.worker)
        if worker is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sampler = copier = None
        if start_services:
            await runtime.start()
            sampler = asyncio.create_task(app.state.live.run(), name="live-sampler")
            if mirror is not None:
                copier = asyncio.create_task(mirror.run(), name="metrics-mirror")
        try:
            yield
        finally:
            if start_services:
                app.state.live.stop()
                try:
                    if sampler is not None:
                        with contextlib.suppress(asyncio.CancelledError):
                            await sampler
                finally:  # a sampler that failed (an unreadable metrics file) must not keep the writers running
                    await runtime.stop()
                    if copier is not None:  # after the stop: the last ACKs' counts are copied too
                        copier.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await copier

    app = FastAPI(
        title="HL7 v2 → FHIR gateway",
        version=__version__,
        description="IHE PAM France ADT feeds in, FHIR R4 Patient/Encounter and Subscriptions out.",
        lifespan=lifespan,
        # Every route goes through the one authorization edge (a route without a rule is refused).
        dependencies=[AUTHORIZE],
        docs_url=None,  # served by gateway.web from local assets (no CDN)
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.include_router(ingest.router)
    app.include_router(fhir.router)
    app.include_router(admin.router)
    app.include_router(sandbox.router)
    app.include_router(sandbox.store_router)
    app.include_router(health.router)
    app.include_router(oauth.router)

    store = CollectorRegistry(auto_describe=False)
    store.register(StoreCollector(lambda: store_figures(runtime.db), lambda: pool_figures(runtime.db), worker=worker))
    if mirror is None:
        store.register(ServiceCollector(mllp=lambda: runtime.mllp, worker=lambda: runtime.worker))
    # One process: its own registry. Several workers: every worker's counters, summed from their files.
    shared = REGISTRY if worker is None else aggregated_registry()
    install_pages(app, registries=(shared, store))  # the live view reads what /metrics serves

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        # The process-wide (or every worker's) metrics, then this app's store gauges (read from the database now).
        store_text = await run_in_threadpool(generate_latest, store)
        shared_text = generate_latest() if worker is None else await run_in_threadpool(generate_latest, shared)
        return Response(shared_text + store_text, media_type=CONTENT_TYPE_LATEST)

    _install_error_handlers(app)
    _install_middleware(app, runtime)
    return app


def _install_middleware(app: FastAPI, runtime: Runtime) -> None:
    """Outermost first: CORS (answers preflights), the edge (ids, access log, HEAD), gzip, FHIR REST."""
    app.add_middleware(FhirRestMiddleware)
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES)
    app.add_middleware(EdgeMiddleware, settings=runtime.settings)
    origins = runtime.settings.cors_origins
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "If-None-Match", "Prefer", "X-Platform"],
            expose_headers=CORS_EXPOSED,
            max_age=600,
        )


#: Methods a route of ours may serve (probed one by one: included routers hide their routes' methods).
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own ``Allow`` names only the first route's)."""
    methods = {
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in app.router.routes)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        status, body = outcome_of(exc)
        headers = dict(getattr(exc, "headers", None) or {})
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = exc.www_authenticate()
        return fhir_response(body, status=status, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        body = operation_outcome(f"invalid request: {where}: {first.get('msg', '')}", code="invalid")
        return fhir_response(body, status=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request)) or headers.get("Allow", "")
        body = operation_outcome(str(exc.detail), code=code)
        return fhir_response(body, status=exc.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return fhir_response(operation_outcome("internal error", code="exception"), status=500)
