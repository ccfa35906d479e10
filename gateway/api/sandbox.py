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
from gateway.convert import convert_messages
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
    try:
        body = await read_body(request, limit=runtime.settings.max_message_bytes * 10)
    except TransportError as exc:
        return JSONResponse(operation_outcome(exc.text, code="invalid"), status_code=exc.status)
    messages = split_messages(body)[:MAX_MESSAGES]
    result = await run_in_threadpool(convert_messages, messages, engine=runtime.engine)
    return {
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
