"""Operator routes: the message journal (metadata, never bodies in lists) and replay of a stored message."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import AccessDep, RuntimeDep
from gateway.auth.authorities import MINTED_PREFIX, undeclared
from gateway.auth.clients import SENDER
from gateway.clock import utcnow
from gateway.db.access import ClientRepo, systems_starting
from gateway.db.engine import transaction
from gateway.db.repo import MessageRecord, MessageRepo
from gateway.errors import NotFoundError
from gateway.metrics import record_message
from gateway.subscriptions.service import resend

router = APIRouter(prefix="/admin", tags=["admin"])


def _summary(record: MessageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "received_at": record.received_at.isoformat(),
        "transport": record.transport,
        "sending_application": record.sending_application,
        "sending_facility": record.sending_facility,
        "control_id": record.control_id,
        "type": f"{record.message_type}^{record.trigger_event}",
        "outcome": record.outcome,
        "status": record.status,
        "error_code": record.error_code,
        "error_text": record.error_text,
        "duplicate_of": record.duplicate_of,
        "size": len(record.raw),
    }


@router.get("/messages", summary="The message journal, newest first")
async def list_messages(
    runtime: RuntimeDep,
    outcome: str | None = Query(default=None, pattern="^(AA|AE|AR)$"),
    limit: int = Query(default=100, ge=1, le=1000),
    before_id: int | None = Query(default=None, ge=1),
) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with runtime.db.connect() as conn:
            repo = MessageRepo(conn)
            rows = repo.list(outcome=outcome, limit=limit, before_id=before_id)
            return {"counts": repo.counts(), "messages": [_summary(r) for r in rows]}

    return await run_in_threadpool(work)


@router.get("/messages/{message_id}", summary="One stored message, with its raw text and ACK")
async def get_message(message_id: int, runtime: RuntimeDep, access: AccessDep) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with runtime.db.connect() as conn:
            record = MessageRepo(conn).get(message_id)
        if record is None:
            raise NotFoundError(f"message {message_id} not found")
        access.trail.raw_message(message_id)  # raw messages are patient data: operators' views are audited
        return {**_summary(record), "raw": record.raw.decode("latin-1"), "ack": record.ack}

    return await run_in_threadpool(work)


@router.post("/messages/{message_id}/replay", summary="Run a stored message through the pipeline again")
async def replay(message_id: int, runtime: RuntimeDep) -> dict[str, Any]:
    outcome = await run_in_threadpool(runtime.pipeline.replay, message_id)
    record_message(transport="replay", outcome=outcome.code, ack=outcome.ack)
    return {
        "code": outcome.code,
        "status": outcome.status,
        "message_id": outcome.message_id,
        "ack": outcome.ack.decode("latin-1"),
        # What reprocessing gave a new version (after a mapping fix); empty when nothing changed.
        "changed": [f"{r.type}/{r.id}/_history/{r.version_id}" for r in outcome.changed],
    }


@router.get("/authorities", summary="Senders' identifier domains: declared ones, and those seen but undeclared")
async def list_authorities(runtime: RuntimeDep) -> dict[str, Any]:
    """What to declare with ``gateway clients authorities ID --set AUTHORITY=SYSTEM``."""

    def work() -> dict[str, Any]:
        with runtime.db.connect() as conn:
            clients = ClientRepo(conn).list()
            minted = systems_starting(conn, MINTED_PREFIX)
        declared = [
            {"client_id": c.id, "name": c.name, "facilities": list(c.facilities), "authorities": c.authorities}
            for c in clients
            if c.kind == SENDER
        ]
        return {"declared": declared, "undeclared": undeclared(minted)}

    return await run_in_threadpool(work)


@router.post("/subscriptions/{sub_id}/resend", summary="Reactivate a subscription and resend what it missed")
async def resend_subscription(sub_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    def work() -> int:
        with transaction(runtime.db) as conn:
            return resend(conn, sub_id, now=utcnow())

    count = await run_in_threadpool(work)
    runtime.worker.wake()
    return {"subscription": sub_id, "requeued": count}
