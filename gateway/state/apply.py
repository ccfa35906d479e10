"""Applying one mapped message to the store, inside the caller's transaction.

Order of work: lock the streams → record the facts → refold patient and stay → write the versions
that changed → queue a notification for each topic that fired and each subscription whose filters
match. Everything commits with the raw message, or nothing does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from gateway.db.indexing import search_entries
from gateway.db.repo import FactRepo, OutboxRepo, ResourceRepo, StoredResource, SubscriptionRepo
from gateway.mapping.engine import Mapped
from gateway.state.patients import fold_patient, patient_payload
from gateway.state.visits import VisitFact, fold_visit
from gateway.subscriptions.matching import matches
from gateway.subscriptions.topics import Topic, fired

JSON = dict[str, Any]


@dataclass(slots=True)
class Applied:
    """What one message changed: the new versions and the notifications queued."""

    changed: list[StoredResource] = field(default_factory=list)
    notifications: int = 0
    topics: list[str] = field(default_factory=list)


def apply_message(conn: Connection, mapped: Mapped, *, message_id: int, now: datetime) -> Applied:
    facts, store = FactRepo(conn), ResourceRepo(conn)
    patient_stream = f"Patient/{mapped.patient['id']}"
    visit_stream = f"Encounter/{mapped.encounter['id']}" if mapped.encounter else None
    facts.lock([patient_stream, *([visit_stream] if visit_stream else [])])
    result = Applied()

    facts.add(
        stream=patient_stream,
        message_id=message_id,
        event_time=mapped.event_time,
        kind="demographics",
        payload=patient_payload(
            patient=mapped.patient, event_time=mapped.event_time, control_id=mapped.header.control_id
        ),
    )
    patient = fold_patient(facts.of(patient_stream))
    if patient is not None:
        _put(store, patient, now=now, result=result)

    for practitioner in mapped.practitioners:
        _put(store, practitioner, now=now, result=result)

    if visit_stream and mapped.encounter is not None:
        fact = visit_fact(mapped, mapped.encounter)
        facts.add(
            stream=visit_stream,
            message_id=message_id,
            event_time=mapped.event_time,
            kind=mapped.event.kind,
            payload=fact.to_payload(),
        )
        encounter = fold_visit([VisitFact.from_payload(p) for p in facts.of(visit_stream)])
        if encounter is not None:
            previous = store.get("Encounter", encounter["id"])
            stored = _put(store, encounter, now=now, result=result)
            if stored is not None:
                for topic in fired("Encounter", previous.content if previous else None, stored.content):
                    result.topics.append(topic.code)
                    result.notifications += _enqueue(conn, topic, stored, patient=patient, now=now)
    return result


def visit_fact(mapped: Mapped, encounter: JSON) -> VisitFact:
    return VisitFact(
        trigger=mapped.event.trigger,
        kind=mapped.event.kind,
        action=mapped.action,
        cancels=mapped.event.cancels,
        event_time=mapped.event_time,
        control_id=mapped.header.control_id,
        encounter=encounter,
        movement=mapped.movement,
    )


def _put(store: ResourceRepo, resource: JSON, *, now: datetime, result: Applied) -> StoredResource | None:
    stored, changed = store.put(resource, now=now, index=search_entries(resource))
    if changed:
        result.changed.append(stored)
        return stored
    return None


def _enqueue(conn: Connection, topic: Topic, focus: StoredResource, *, patient: JSON | None, now: datetime) -> int:
    subs, outbox = SubscriptionRepo(conn), OutboxRepo(conn)
    queued = 0
    context = [{"reference": focus.content["subject"]["reference"]}] if focus.content.get("subject") else []
    for sub in subs.listening(topic.url):
        if not matches(sub.filters, resource=focus.content, patient=patient):
            continue
        number = subs.next_event_number(sub.id)
        outbox.add(
            subscription_id=sub.id,
            event_number=number,
            notification_type="event-notification",
            topic=topic.url,
            occurred_at=now,
            focus=(focus.type, focus.id, focus.version_id),
            context=context,
        )
        queued += 1
    return queued
