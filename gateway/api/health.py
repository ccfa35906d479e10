"""Health probes: ``/health/live`` (the process answers; no I/O) and ``/health/ready`` (it can do its job).

Readiness checks the database in a worker thread with a deadline, so a hung database makes the probe
answer 503 in ``GATEWAY_HEALTH_TIMEOUT`` seconds instead of freezing the event loop (and with it HTTP
and MLLP for everyone). At most one check runs at a time: probes that come while one is pending share
its result, so a hung database cannot pile up threads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.db.engine import ping, schema_is_current
from gateway.runtime import Runtime

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])
JSON_MEDIA = "application/json"


class _Probe:
    """The one database check in flight for a runtime, shared by concurrent probes."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pending: asyncio.Future[dict[str, Any]] | None = None

    async def database(self, *, migrations: bool) -> dict[str, Any]:
        if self.pending is None or self.pending.done():
            self.pending = asyncio.ensure_future(asyncio.to_thread(self._check, migrations))
        try:
            async with asyncio.timeout(self.runtime.settings.health_timeout):
                return await asyncio.shield(self.pending)
        except TimeoutError:
            logger.warning("health check: database did not answer in %.1f s", self.runtime.settings.health_timeout)
            return {"database": "timeout"}

    def _check(self, migrations: bool) -> dict[str, Any]:
        try:
            ping(self.runtime.db)
            if migrations and not schema_is_current(self.runtime.db):
                return {"database": "ok", "migrations": "pending"}
        except Exception as exc:
            logger.warning("health check: database unreachable (%s)", type(exc).__name__)
            return {"database": "unavailable"}
        return {"database": "ok", "migrations": "current"} if migrations else {"database": "ok"}


def _probe(request: Request) -> _Probe:
    probe: _Probe | None = getattr(request.app.state, "health_probe", None)
    if probe is None:
        probe = request.app.state.health_probe = _Probe(request.app.state.runtime)
    return probe


def _answer(checks: dict[str, Any], *, ok: bool) -> Response:
    body = {"status": "ok" if ok else "unavailable", **checks}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type=JSON_MEDIA)


@router.get("/health/live", summary="Liveness: the process answers (no I/O)")
async def live() -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON_MEDIA)


@router.get("/health/ready", summary="Readiness: database reachable, migrations current, delivery worker alive")
async def ready(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    checks = await _probe(request).database(migrations=True)
    checks["worker"] = runtime.worker_state()
    ok = checks.get("database") == "ok" and checks.get("migrations") == "current"
    ok = ok and checks["worker"] in {"alive", "disabled"}
    return _answer(checks, ok=ok)


@router.get("/health", summary="Database reachability (kept for existing probes; see /health/ready)")
async def health(request: Request) -> Response:
    checks = await _probe(request).database(migrations=False)
    return _answer({}, ok=checks.get("database") == "ok")  # the body it always had: just the status
