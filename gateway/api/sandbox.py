"""The integrator's sandbox: run messages through the real pipeline on a throw-away store, see the result.

Nothing touches the real store, no notification leaves, and the answer shows each ACK (with its warnings)
and every resource the messages would produce. Several messages can be sent at once (a whole stay), as
MLLP frames or separated by blank lines, and are applied in the order given.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import RuntimeDep
from gateway.api.ingest import TransportError, read_body
from gateway.api.limits import cpu_budget
from gateway.convert import Converted, convert_messages
from gateway.fhir.outcome import operation_outcome

router = APIRouter(prefix="/sandbox", tags=["sandbox"])
MAX_MESSAGES = 200
_SPLIT = re.compile(rb"\x1c\r?|\x0b|(?:\r\n|\n|\r){2,}")


def split_messages(body: bytes) -> list[bytes]:
    """One body → messages: MLLP frames, or ER7 messages separated by an empty line."""
    parts = [p.strip(b"\r\n\t ") for p in _SPLIT.split(body)]
    return [p for p in parts if p]


@router.post("/convert", summary="Try messages on a throw-away store: ACKs and resulting FHIR, nothing kept")
async def sandbox_convert(request: Request, runtime: RuntimeDep) -> Any:
    settings = runtime.settings
    try:
        body = await read_body(request, limit=settings.sandbox_max_bytes)
    except TransportError as exc:
        code = "too-long" if exc.status == 413 else "invalid"
        return JSONResponse(operation_outcome(exc.text, code=code), status_code=exc.status)
    messages = split_messages(body)[:MAX_MESSAGES]

    def work() -> Converted:
        # The budget is measured in the thread that does the work, so other requests' CPU does not count.
        return convert_messages(messages, engine=runtime.engine, exhausted=cpu_budget(settings.sandbox_cpu_seconds))

    result = await run_in_threadpool(work)
    skipped = len(messages) - len(result.acks)
    return {
        "skipped": skipped,
        "skippedReason": f"CPU budget of {settings.sandbox_cpu_seconds:g} s used up" if skipped else None,
        "messages": [
            {
                "code": code,
                "ack": ack.replace("\r", "\n"),
                "issues": [
                    {"severity": i.severity, "code": i.code, "location": i.location, "text": i.text} for i in issues
                ],
            }
            for code, issues, ack in result.acks
        ],
        "bundle": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in result.resources],
        },
    }
