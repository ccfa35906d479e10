"""The operator console: the message journal (filters, paging, one message with Replay), subscriptions
(backlog, last error, next retry, Resend) and a live view of the ``/metrics`` figures.

Every console route is in this one router, guarded by one dependency, so the operator rule of the
authorization edge (``gateway/auth/rules.py``) admits operators only. Pages call the same services as ``/admin``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import AccessDep, RuntimeDep
from gateway.clock import utcnow
from gateway.db.console import MessageFilter, find_messages, subscription_lines
from gateway.db.engine import transaction
from gateway.db.repo import MessageRecord, MessageRepo, ResourceRepo
from gateway.errors import GatewayError, NotFoundError
from gateway.hl7 import er7
from gateway.mapping.engine import Engine
from gateway.metrics import record_message
from gateway.state.careteam import careteam_id
from gateway.subscriptions.service import resend
from gateway.web.live import LiveSampler
from gateway.web.present import summarize
from gateway.web.templating import render

router = APIRouter(prefix="/console", include_in_schema=False)  # operators only: gateway/auth/rules.py
PAGE_SIZE = 50
OUTCOMES = ("AA", "AE", "AR")


@router.get("")
async def console_home() -> RedirectResponse:
    return RedirectResponse("/console/messages", status_code=303)


# -- messages -------------------------------------------------------------------------------------


def _day(value: str, *, end: bool = False) -> datetime | None:
    """A ``YYYY-MM-DD`` filter as a UTC instant (the end date is inclusive); bad dates filter nothing."""
    try:
        day = date.fromisoformat(value) if value else None
    except ValueError:
        return None
    if day is None:
        return None
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return moment + timedelta(days=1) if end else moment


class MessageQuery(BaseModel):
    """The filters of the messages page, as query parameters (``from``/``to`` are ``YYYY-MM-DD``)."""

    outcome: str = Field(default="", pattern="^(|AA|AE|AR)$")
    sender: str = Field(default="", max_length=255)
    trigger: str = Field(default="", max_length=16)
    control_id: str = Field(default="", max_length=255)
    ipp: str = Field(default="", max_length=255)
    received_from: str = Field(default="", alias="from", max_length=10)
    received_to: str = Field(default="", alias="to", max_length=10)
    before_id: int | None = Field(default=None, ge=1)

    def filters(self) -> dict[str, str]:
        """The filters as the form shows them (and as the "older" link repeats them)."""
        return {
            "outcome": self.outcome,
            "sender": self.sender,
            "trigger": self.trigger,
            "control_id": self.control_id,
            "ipp": self.ipp,
            "from": self.received_from,
            "to": self.received_to,
        }

    def where(self) -> MessageFilter:
        return MessageFilter(
            outcome=self.outcome,
            sender=self.sender.strip(),
            trigger=self.trigger.strip().upper(),
            control_id=self.control_id.strip(),
            ipp=self.ipp.strip(),
            received_from=_day(self.received_from),
            received_to=_day(self.received_to, end=True),
        )


@router.get("/messages", response_class=HTMLResponse)
async def messages_page(request: Request, runtime: RuntimeDep, query: Annotated[MessageQuery, Query()]) -> HTMLResponse:
    where, before_id = query.where(), query.before_id

    def work() -> tuple[list[MessageRecord], dict[str, int]]:
        with runtime.db.connect() as conn:
            rows = find_messages(conn, where, limit=PAGE_SIZE + 1, before_id=before_id)
            return rows, MessageRepo(conn).counts()

    rows, counts = await run_in_threadpool(work)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    filters = query.filters()
    older = {**{k: v for k, v in filters.items() if v}, "before_id": rows[-1].id} if more and rows else None
    context = {"rows": rows, "counts": counts, "filters": filters, "outcomes": OUTCOMES, "older": older}
    return render(request, "console_messages.html", context)


@dataclass(frozen=True, slots=True)
class FieldView:
    location: str
    value: str
    #: The ACK's ERR text pointing at this field, if any (the page marks the field).
    problem: str = ""


@dataclass(frozen=True, slots=True)
class SegmentView:
    name: str
    fields: list[FieldView]
    problem: str = ""


def err_locations(ack: str | None) -> dict[tuple[str, int], str]:
    """ERR-2 (ERL: segment^sequence^field) → ERR-8 text, from the stored ACK; field 0 is the segment."""
    found: dict[tuple[str, int], str] = {}
    for line in (ack or "").replace("\n", "\r").split("\r"):
        fields = line.split("|")
        if fields[0] != "ERR" or len(fields) < 3:
            continue
        erl = fields[2].split("^")
        number = int(erl[2]) if len(erl) > 2 and erl[2].isdigit() else 0
        text = fields[8] if len(fields) > 8 else ""
        found[(erl[0], number)] = "; ".join(filter(None, [found.get((erl[0], number), ""), text]))
    return found


def segments_of(raw: bytes, *, ack: str | None = None) -> list[SegmentView]:
    """The raw message, one row per segment, each field with its location (``PID-5``) for a tooltip, and
    the fields the ACK's ERR segments point at marked (the first segment of that name, as ERL says ``1``)."""
    text, _codec, _warnings = er7.decode(raw)
    problems = err_locations(ack)
    seen: set[str] = set()
    views = []
    for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if not line.strip():
            continue
        name, *values = line.split("|")
        first = 1 if name != "MSH" else 2  # MSH-1 is the field separator itself
        marked = {} if name in seen else {n: t for (seg, n), t in problems.items() if seg == name}
        seen.add(name)
        fields = [FieldView(f"{name}-{n}", v, marked.get(n, "")) for n, v in enumerate(values, start=first)]
        views.append(SegmentView(name, fields, marked.get(0, "")))
    return views


def touched(engine: Engine, raw: bytes) -> list[str]:
    """What the message is about (its patient, stay, care circle, doctors), from the pure mapping."""
    try:
        mapped = engine.map(er7.parse(raw))
    except GatewayError:
        return []  # rejected: it changed nothing
    patient = str(mapped.patient["id"])
    refs = [f"Patient/{patient}", f"CareTeam/{careteam_id(patient)}"]
    if mapped.encounter:
        refs.append(f"Encounter/{mapped.encounter['id']}")
    if mapped.prior and mapped.prior.get("id"):
        refs.append(f"Patient/{mapped.prior['id']}")
    refs += [f"Practitioner/{p['id']}" for p in mapped.practitioners]
    return refs


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def message_page(
    request: Request,
    message_id: int,
    runtime: RuntimeDep,
    access: AccessDep,
    replayed: str = Query(default="", max_length=2),
) -> HTMLResponse:
    """The raw message is patient data: an operator's view is audited, as on ``/admin/messages/{id}``."""

    def work() -> tuple[MessageRecord, list[dict[str, Any]]]:
        with runtime.db.connect() as conn:
            record = MessageRepo(conn).get(message_id)
            if record is None:
                raise NotFoundError(f"message {message_id} not found")
            store = ResourceRepo(conn)
            changed = []
            for ref in touched(runtime.engine, record.raw):
                rtype, _, rid = ref.partition("/")
                found = store.get(rtype, rid)
                if found is not None:
                    changed.append({"reference": ref, "version": found.version_id, "summary": summarize(found.content)})
            return record, changed

    record, changed = await run_in_threadpool(work)
    access.trail.raw_message(message_id)
    context = {
        "m": record,
        "segments": segments_of(record.raw, ack=record.ack),
        "changed": changed,
        "ack": (record.ack or "(none)").replace("\r", "\n"),
        "replayed": replayed if replayed in OUTCOMES else "",
    }
    return render(request, "console_message.html", context)


@router.post("/messages/{message_id}/replay")
async def replay_message(message_id: int, runtime: RuntimeDep) -> RedirectResponse:
    """The Replay button: the stored bytes through the pipeline again, then back to the message's page."""
    try:
        outcome = await run_in_threadpool(runtime.pipeline.replay, message_id)
    except LookupError as exc:
        raise NotFoundError(f"message {message_id} not found") from exc
    record_message(transport="replay", outcome=outcome.code, ack=outcome.ack)
    return RedirectResponse(f"/console/messages/{message_id}?replayed={outcome.code}", status_code=303)


# -- subscriptions --------------------------------------------------------------------------------


@router.get("/subscriptions", response_class=HTMLResponse)
async def subscriptions_page(
    request: Request,
    runtime: RuntimeDep,
    resent: str = Query(default="", max_length=64),
    requeued: int = Query(default=0, ge=0),
) -> HTMLResponse:
    def work() -> list[Any]:
        with runtime.db.connect() as conn:
            return subscription_lines(conn)

    lines = await run_in_threadpool(work)
    context = {"lines": lines, "resent": resent, "requeued": requeued}
    return render(request, "console_subscriptions.html", context)


@router.post("/subscriptions/{sub_id}/resend")
async def resend_subscription(sub_id: str, runtime: RuntimeDep) -> RedirectResponse:
    """Reactivate and requeue what the subscription missed (as ``POST /admin/subscriptions/{id}/resend``)."""

    def work() -> int:
        with transaction(runtime.db) as conn:
            return resend(conn, sub_id, now=utcnow())

    count = await run_in_threadpool(work)
    runtime.worker.wake()
    return RedirectResponse(f"/console/subscriptions?resent={sub_id}&requeued={count}", status_code=303)


# -- live view ------------------------------------------------------------------------------------


def _sampler(request: Request) -> LiveSampler:
    sampler: LiveSampler = request.app.state.live
    return sampler


@router.get("/live", response_class=HTMLResponse)
async def live_page(request: Request) -> HTMLResponse:
    return render(request, "console_live.html", {"interval": _sampler(request).interval})


@router.get("/live/data")
async def live_data(request: Request) -> JSONResponse:
    """The plotted series (the page polls this); a reading is taken if the last one is old enough."""
    sampler = _sampler(request)
    await run_in_threadpool(sampler.sample)
    return JSONResponse({"interval": sampler.interval, "series": sampler.series()})
