"""The integrator's sandbox API: run messages through the real pipeline on a throw-away store, see the result.

Nothing touches the real store, no notification leaves, and the answer shows each ACK (with its warnings),
every resource the messages would produce, and the notifications a subscriber would receive. Several
messages can be sent at once (a whole stay, or a day's file for ``/sandbox/report``), as MLLP frames or
separated by blank lines, and are applied in the order given. Each call is bounded in bytes, messages and
CPU time, and each client in calls per minute. The page at ``GET /sandbox`` (``gateway/web``) calls these.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import AccessDep, RuntimeDep
from gateway.api.errors import outcome_of
from gateway.api.ingest import ACCEPTED_TYPES, read_body
from gateway.api.limits import cpu_budget
from gateway.auth.policy import Access
from gateway.db.console import MessageFilter, find_messages
from gateway.db.repo import MessageRepo
from gateway.errors import NotFoundError, TransportError
from gateway.fhir.outcome import operation_outcome
from gateway.hl7 import er7
from gateway.runtime import Runtime
from gateway.web.limits import RateLimiter, client_key
from gateway.web.present import present_trial
from gateway.web.report import build_report, report_csv
from gateway.web.samples import build_samples
from gateway.web.tenants import SandboxStore
from gateway.web.trial import Trial, run_trial

router = APIRouter(prefix="/sandbox", tags=["sandbox"])
#: A stay shown on the page; files of many messages go to ``/sandbox/report``.
MAX_MESSAGES = 200
_SPLIT = re.compile(rb"\x1c\r?|\x0b|(?:\r\n|\n|\r){2,}")
_EXAMPLE = (
    "MSH|^~\\&|GAM-SANDBOX|CH-SANDBOX|GATEWAY|ARS-SANDBOX|20261202083000||ADT^A01^ADT_A01|SBX-1|P|"
    "2.5^FRA^2.11|||||FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM\n"
    "EVN||20261202083000\n"
    "PID|1||770101^^^CH-SANDBOX&1.2.250.1.999.7.1&ISO^PI||DURAND^ÉLODIE^^^MME^^L||19790412|F\n"
    "PV1|1|I|MED^204^1^CH-SANDBOX&1.2.250.1.999.7&ISO|||||||||||||||||SBX-V1^^^CH-SANDBOX&1.2.250.1.999.7.2&ISO^VN\n"
)
_BODY = {
    "required": True,
    "description": "One or more HL7 v2 messages (ER7): MLLP frames, or messages separated by an empty line. "
    "Segments may end with CR, LF or CRLF.",
    "content": {t: {"schema": {"type": "string"}, "example": _EXAMPLE} for t in sorted(ACCEPTED_TYPES)},
}
_LIMITS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Empty body"},
    413: {"description": "Body larger than GATEWAY_SANDBOX_MAX_BYTES"},
    415: {"description": "Unsupported media type"},
    429: {"description": "Too many calls from this client (see Retry-After)"},
}


def split_messages(body: bytes) -> list[bytes]:
    """One body → messages: MLLP frames, or ER7 messages separated by an empty line."""
    parts = [p.strip(b"\r\n\t ") for p in _SPLIT.split(body)]
    return [p for p in parts if p]


def as_sent(message: bytes, *, charset: str) -> bytes:
    """Text typed in a browser arrives in UTF-8 whatever MSH-18 says: re-encode it as a sender would.

    Only when the request declares ``charset=utf-8`` (the page does): a file uploaded as bytes, or a
    body without a charset, goes through untouched, exactly as the gateway would receive it.
    """
    if charset != "utf-8":
        return message
    codec = er7.CHARSETS.get(er7.sniff_charset(message))
    if codec is None or codec.replace("_", "-").lower() in {"utf-8", "utf8"}:
        return message
    try:
        return message.decode("utf-8").encode(codec, errors="replace")
    except UnicodeDecodeError:
        return message  # not UTF-8 after all: leave the bytes to the pipeline's own fallback


def _charset(request: Request) -> str:
    for param in request.headers.get("content-type", "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return ""


def _limiter(request: Request, runtime: Runtime) -> RateLimiter:
    """One limiter per app, built on first use from the settings (the event loop makes this race-free)."""
    limiter: RateLimiter | None = getattr(request.app.state, "sandbox_limiter", None)
    if limiter is None:
        settings = runtime.settings
        limiter = RateLimiter(per_minute=settings.sandbox_rate_per_minute, burst=settings.sandbox_burst)
        request.app.state.sandbox_limiter = limiter
    return limiter


async def _messages(request: Request, runtime: Runtime, access: Access, *, limit: int) -> list[bytes] | Response:
    """The call's messages, or the 4xx answer (rate limit, size, media type, empty body)."""
    wait = _limiter(request, runtime).allow(client_key(request, access.principal))
    if wait:
        body = operation_outcome("too many sandbox calls from this client; retry later", code="throttled")
        return JSONResponse(body, status_code=429, headers={"Retry-After": str(max(1, round(wait)))})
    try:
        raw = await read_body(request, limit=runtime.settings.sandbox_max_bytes)
    except TransportError as exc:
        status, outcome = outcome_of(exc)
        return JSONResponse(outcome, status_code=status)
    charset = _charset(request)
    return [as_sent(m, charset=charset) for m in split_messages(raw)[:limit]]


@router.post(
    "/convert",
    summary="Try messages on a throw-away store: ACKs, resources, notifications, timeline; nothing kept",
    description="The answer: `messages` (per message: `code` AA/AE/AR, `ack`, `issues` with their ERR "
    "location, `changed` resources), `bundle` (the resulting resources), `summaries`, `validation` "
    "(structure findings and claimed profiles per resource), `notifications` (the Backport Bundles a "
    "subscriber to every topic would receive, `id-only`), `timeline` (each stay's movements), `care_circle` "
    "(the CareTeam after each message that changed it) and `skipped` (messages left out when the call's CPU "
    f"budget ran out). At most {MAX_MESSAGES} messages per call.",
    openapi_extra={"requestBody": _BODY},
    responses=_LIMITS,
)
async def sandbox_convert(request: Request, runtime: RuntimeDep, access: AccessDep) -> Any:
    messages = await _messages(request, runtime, access, limit=MAX_MESSAGES)
    if isinstance(messages, Response):
        return messages
    seconds = runtime.settings.sandbox_cpu_seconds

    def work() -> Trial:
        # The budget is measured in the thread that does the work, so other requests' CPU does not count.
        return run_trial(messages, engine=runtime.engine, exhausted=cpu_budget(seconds))

    return present_trial(await run_in_threadpool(work), cpu_seconds=seconds)


@router.post(
    "/report",
    summary="Conformance report for a file of many messages: counts by trigger and outcome, warnings by kind",
    description="The messages run in order on a throw-away store, as in `/sandbox/convert`. JSON (default): "
    "`messages`, `skipped`, `outcomes`, `by_trigger` (AA/AE/AR counts), `issues_by_kind`, `worst` (the "
    "worst messages first) and `rows` (one per message); `format=csv`: one line per message. At most "
    "GATEWAY_SANDBOX_MAX_MESSAGES messages.",
    openapi_extra={"requestBody": _BODY},
    responses={**_LIMITS, 200: {"content": {"application/json": {}, "text/csv": {}}, "description": "The report"}},
)
async def sandbox_report(
    request: Request,
    runtime: RuntimeDep,
    access: AccessDep,
    format: Literal["json", "csv"] = Query(default="json", description="json or csv"),
) -> Any:
    messages = await _messages(request, runtime, access, limit=runtime.settings.sandbox_max_messages)
    if isinstance(messages, Response):
        return messages
    seconds = runtime.settings.sandbox_cpu_seconds

    def work() -> Trial:
        return run_trial(messages, engine=runtime.engine, exhausted=cpu_budget(seconds), notifications=False)

    report = build_report(await run_in_threadpool(work), cpu_seconds=seconds)
    if format == "csv":
        headers = {"Content-Disposition": 'attachment; filename="sandbox-report.csv"'}
        return Response(report_csv(report), media_type="text/csv; charset=utf-8", headers=headers)
    return report


@router.get("/samples", summary="The sample messages: one per PAM-FR event the gateway handles")
async def sandbox_samples(runtime: RuntimeDep) -> list[dict[str, str]]:
    return [{"trigger": s.trigger, "title": s.title, "text": s.text} for s in build_samples(runtime.engine.tables)]


# -- sandbox tenants: what sandbox senders sent over HTTP and MLLP, kept in the isolated store ---------

store_router = APIRouter(prefix="/sandbox/store", tags=["sandbox"])  # operators, sandbox senders: rules.py


def _store(runtime: Runtime) -> SandboxStore:
    if runtime.sandbox is None:
        raise NotFoundError("no sandbox store: set GATEWAY_SANDBOX_DATABASE_URL and GATEWAY_SANDBOX_SENDERS")
    return runtime.sandbox


def _own(access: Access) -> frozenset[str] | None:
    """The facilities whose messages the caller may see in the store: a sender its own, an operator all."""
    return access.sender_facilities


@store_router.get("/messages", summary="Messages sandbox senders sent (isolated store), newest first")
async def sandbox_store_messages(
    runtime: RuntimeDep, access: AccessDep, limit: int = Query(default=20, ge=1, le=200)
) -> dict[str, Any]:
    """An operator sees every sandbox sender's messages; a signed-in sandbox sender only those it sent."""
    store, own = _store(runtime), _own(access)

    def work() -> list[dict[str, Any]]:
        with store.db.connect() as conn:
            found = find_messages(conn, MessageFilter(facilities=own), limit=limit, before_id=None)
        return [
            {
                "id": m.id,
                "received_at": m.received_at.isoformat(),
                "transport": m.transport,
                "sender": f"{m.sending_application}|{m.sending_facility}",
                "control_id": m.control_id,
                "type": f"{m.message_type}^{m.trigger_event}",
                "outcome": m.outcome,
                "error_text": m.error_text,
            }
            for m in found
        ]

    if own is None:
        senders = sorted({*("|".join(s) for s in store.senders), *(f"*|{f}" for f in store.tenant_facilities)})
    else:
        senders = sorted(f"*|{f}" for f in own)
    return {"senders": senders, "messages": await run_in_threadpool(work)}


@store_router.get("/messages/{message_id}", summary="One message of the sandbox store, with its raw text and ACK")
async def sandbox_store_message(message_id: int, runtime: RuntimeDep, access: AccessDep) -> dict[str, Any]:
    store, own = _store(runtime), _own(access)

    def work() -> dict[str, Any]:
        with store.db.connect() as conn:
            record = MessageRepo(conn).get(message_id)
        if record is None or (own is not None and record.sending_facility not in own):
            raise NotFoundError(f"sandbox message {message_id} not found")
        text, _codec, _warnings = er7.decode(record.raw)
        return {"id": record.id, "outcome": record.outcome, "raw": text, "ack": record.ack}

    return await run_in_threadpool(work)
