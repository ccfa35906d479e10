"""HTTP ingest: ``POST /hl7v2`` with one ER7 message; the answer is always the ACK (200), whatever its code."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.api.deps import AccessDep, RuntimeDep
from gateway.api.errors import http_status
from gateway.errors import BodyTooLargeError, MediaTypeError, TransportError

router = APIRouter(tags=["ingest"])
ACCEPTED_TYPES = frozenset({"application/hl7-v2", "text/plain", "x-application/hl7-v2+er7", "application/edi-hl7"})
HL7_MEDIA = "application/hl7-v2"
CHARSET_NAMES = {
    "utf-8": "utf-8",
    "iso8859-15": "iso-8859-15",
    "latin-1": "iso-8859-1",
    "cp1252": "windows-1252",
    "ascii": "us-ascii",
}


async def read_body(request: Request, *, limit: int) -> bytes:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise MediaTypeError(f"Content-Type must be one of {', '.join(sorted(ACCEPTED_TYPES))}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"message larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"message larger than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip(b" \t\r\n\x0b\x1c"):
        raise TransportError("empty body: send one HL7 v2 message")
    return body


NO_SANDBOX_STORE = "this sender is a sandbox tenant and the gateway has no sandbox store (GATEWAY_SANDBOX_DATABASE_URL)"


@router.post(
    "/hl7v2",
    summary="Ingest one HL7 v2 message (ER7)",
    response_class=Response,
    responses={
        200: {"content": {HL7_MEDIA: {}}, "description": "The ACK (AA, AE or AR) as ER7"},
        400: {"description": "Empty body"},
        413: {"description": "Message too large"},
        415: {"description": "Unsupported media type"},
        503: {"description": "A sandbox sender, but the gateway has no sandbox store"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {t: {"schema": {"type": "string"}} for t in sorted(ACCEPTED_TYPES)},
        }
    },
)
async def ingest(request: Request, runtime: RuntimeDep, access: AccessDep) -> Response:
    try:
        raw = await read_body(request, limit=runtime.settings.max_message_bytes)
    except TransportError as exc:
        return Response(exc.message + "\n", status_code=http_status(exc), media_type="text/plain")
    tenant = access.principal.sandbox_tenant
    if tenant and runtime.sandbox is None:  # never let a sandbox sender's message reach the real store
        return Response(NO_SANDBOX_STORE + "\n", status_code=503, media_type="text/plain")
    facilities = access.sender_facilities
    outcome = await runtime.ingest_outcome(
        raw, transport="http", facilities=lambda: facilities, sandbox_tenant=bool(tenant)
    )
    charset = CHARSET_NAMES.get(outcome.codec, "utf-8")
    return Response(outcome.ack, media_type=f"{HL7_MEDIA}; charset={charset}", headers={"X-Ack-Code": outcome.code})
