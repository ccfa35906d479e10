"""Read queries for the operator console: the message journal filtered, and each subscription's backlog.
Metadata only in lists; bodies only on one message's page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String, func, literal, select

from gateway.db.access import lookup_ids
from gateway.db.indexing import lookup_forms, param_code
from gateway.db.repo import MessageRecord, _message, utc
from gateway.db.schema import clients, facts, messages, outbox, subscriptions


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageFilter:
    """The console's filters; empty values filter nothing. ``sender`` matches MSH-3 or MSH-4."""

    outcome: str = ""
    sender: str = ""
    trigger: str = ""
    control_id: str = ""
    ipp: str = ""
    received_from: datetime | None = None
    received_to: datetime | None = None
    #: Only messages claiming one of these MSH-4 values (a sandbox sender sees its own); None: all.
    facilities: frozenset[str] | None = None


def find_messages(conn: Connection, where: MessageFilter, *, limit: int, before_id: int | None) -> list[MessageRecord]:
    """Newest first, keyset-paged on the id (stable while messages keep arriving)."""
    query = select(messages).order_by(messages.c.id.desc()).limit(limit)
    if where.outcome:
        query = query.where(messages.c.outcome == where.outcome)
    if where.sender:
        query = query.where(
            (messages.c.sending_application == where.sender) | (messages.c.sending_facility == where.sender)
        )
    if where.facilities is not None:
        query = query.where(messages.c.sending_facility.in_(sorted(where.facilities)))
    if where.trigger:
        query = query.where(messages.c.trigger_event == where.trigger)
    if where.control_id:
        query = query.where(messages.c.control_id == where.control_id)
    if where.received_from:
        query = query.where(messages.c.received_at >= where.received_from)
    if where.received_to:
        query = query.where(messages.c.received_at < where.received_to)
    if where.ipp:
        query = query.where(messages.c.id.in_(_messages_of_ipp(where.ipp)))
    if before_id:
        query = query.where(messages.c.id < before_id)
    return [_message(r) for r in conn.execute(query)]


def _messages_of_ipp(ipp: str) -> Any:
    """Ids of the messages that recorded facts about a patient with this identifier value (IPP or INS).

    Rejected messages recorded no fact, so they are found by sender and control id, not by IPP.
    """
    ids = lookup_ids(param_code("Patient", "identifier"), lookup_forms("identifier", None, ipp)).subquery()
    patients = select(literal("Patient/", type_=String) + ids.c.id)
    return select(facts.c.message_id).where(facts.c.stream.in_(patients))


@dataclass(frozen=True, slots=True)
class SubscriptionLine:
    id: str
    status: str
    topic: str
    endpoint: str
    channel_type: str
    error: str | None
    #: the name of the platform client that owns it; "" for subscriptions made before clients existed
    owner: str
    backlog: int
    last_error: str | None
    next_retry: datetime | None
    created_at: datetime


def subscription_lines(conn: Connection) -> list[SubscriptionLine]:
    """Every subscription with its pending notifications, the latest delivery error and the next attempt."""
    pending = (
        select(
            outbox.c.subscription_id.label("sid"),
            func.count().label("backlog"),
            func.min(outbox.c.next_attempt_at).label("next_retry"),
        )
        .where(outbox.c.status == "pending")
        .group_by(outbox.c.subscription_id)
        .subquery()
    )
    last_error = (
        select(outbox.c.last_error)
        .where(outbox.c.subscription_id == subscriptions.c.id, outbox.c.last_error.is_not(None))
        .order_by(outbox.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(
            subscriptions,
            pending.c.backlog,
            pending.c.next_retry,
            last_error.label("last_error"),
            clients.c.name.label("owner_name"),
        )
        .outerjoin(pending, pending.c.sid == subscriptions.c.id)
        .outerjoin(clients, clients.c.id == subscriptions.c.owner)
        .order_by(subscriptions.c.created_at.desc(), subscriptions.c.id)
    )
    return [
        SubscriptionLine(
            id=r.id,
            status=r.status,
            topic=r.topic,
            endpoint=r.endpoint,
            channel_type=r.channel_type,
            error=r.error,
            owner=r.owner_name or "",
            backlog=int(r.backlog or 0),
            last_error=r.last_error,
            next_retry=utc(r.next_retry),
            created_at=utc(r.created_at) or r.created_at,
        )
        for r in conn.execute(query)
    ]
