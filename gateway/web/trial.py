"""A sandbox run: messages through the real pipeline on a throw-away store, with what each one did.

Beyond ``gateway convert`` (ACKs and the final resources), a trial keeps, per message, the resources it
changed (to draw the stay's timeline and the care circle as it evolves) and the notifications a
subscriber to every topic would have received, built by the same code the delivery worker uses. The
store lives in memory for one call; nothing touches the real store and no notification leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.clock import utcnow
from gateway.db.engine import Database as DB
from gateway.db.engine import DbConnection as Connection
from gateway.db.engine import throwaway_engine, transaction
from gateway.db.repo import (
    OutboxRecord,
    OutboxRepo,
    ResourceRepo,
    StoredResource,
    SubscriptionRecord,
    SubscriptionRepo,
)
from gateway.hl7.ack import AckIssue
from gateway.mapping.engine import Engine
from gateway.pipeline import Pipeline
from gateway.subscriptions.nde import EXT_SUBSCRIBER
from gateway.subscriptions.nde_declaration import PROFILE_ORGANIZATION
from gateway.subscriptions.nde_order import notification_order
from gateway.subscriptions.notification import NotificationContext, build_notification_bundle
from gateway.subscriptions.topics import TOPICS
from gateway.subscriptions.worker import notification_events

JSON = dict[str, Any]
#: Resource types in the order a reader expects them.
ORDER = ("Patient", "Encounter", "CareTeam", "Practitioner", "Subscription")
#: The FHIR base the previewed notifications refer to (they never leave the sandbox).
PREVIEW_BASE = "https://sandbox.invalid/fhir"
SANDBOX_TRANSPORT = "sandbox"

DECLARATION_TOPIC = next(t.url for t in TOPICS if t.code == "event-declaration")
#: The NdE subscription the previewed flux 4 orders answer: its Subscriber, a platform, is their recipient.
PREVIEW_NDE_SUBSCRIPTION: JSON = {
    "resourceType": "Subscription",
    "id": "sandbox-nde",
    "contained": [
        {
            "resourceType": "Organization",
            "id": "subscriber",
            "meta": {"profile": [PROFILE_ORGANIZATION]},
            "name": "Plateforme e-parcours (aperçu)",
        }
    ],
    "extension": [{"url": EXT_SUBSCRIBER, "valueReference": {"reference": "#subscriber"}}],
    "channel": {"type": "rest-hook", "endpoint": "https://platform.sandbox.invalid/fhir"},
}


@dataclass(slots=True)
class Step:
    """One message of a trial: its ACK, what it changed, the notifications it would have sent."""

    number: int
    raw: bytes
    code: str
    ack: str
    issues: list[AckIssue]
    changed: list[StoredResource]
    notifications: list[JSON] = field(default_factory=list)
    #: the flux 4 orders (``NdE_NotificationRequestNdE``) an NdE subscriber would receive for this message
    nde_orders: list[JSON] = field(default_factory=list)


@dataclass(slots=True)
class Trial:
    steps: list[Step]
    #: Messages left out because the call's CPU budget ran out (0 when every message ran).
    skipped: int = 0

    def resources(self) -> list[JSON]:
        """The latest version of every resource the messages produced, in reading order."""
        latest: dict[tuple[str, str], StoredResource] = {}
        for step in self.steps:
            for stored in step.changed:
                latest[(stored.type, stored.id)] = stored
        found = [s.content for s in latest.values() if not s.deleted]
        found.sort(key=lambda r: (ORDER.index(r["resourceType"]) if r["resourceType"] in ORDER else 99, r["id"]))
        return found


def run_trial(
    raws: Iterable[bytes],
    *,
    engine: Engine,
    exhausted: Callable[[], bool],
    notifications: bool = True,
    clock: Callable[[], datetime] = utcnow,
) -> Trial:
    """Run ``raws`` in order; stop (and count the rest as skipped) once ``exhausted()`` says so.

    The API passes ``gateway.api.limits.cpu_budget``: the calling thread's CPU time, so a slow machine
    shared with other work does not cut a run short, while expensive messages cannot hold a worker long.
    """
    db = throwaway_engine()
    try:
        subscribers = _subscribe_to_every_topic(db, now=clock()) if notifications else []
        medium_row = engine.tables.codes["ChannelType_to_Medium"].get("rest-hook")
        medium = medium_row.coding() if medium_row is not None else None
        pipeline = Pipeline(engine=engine, db=db, clock=clock)
        steps: list[Step] = []
        pending = list(raws)
        for number, raw in enumerate(pending, start=1):
            if exhausted():
                return Trial(steps=steps, skipped=len(pending) - len(steps))
            outcome = pipeline.ingest(raw, transport=SANDBOX_TRANSPORT)
            step = Step(number, raw, outcome.code, outcome.ack_text, outcome.issues, outcome.changed)
            if subscribers:
                step.notifications, step.nde_orders = _drain(db, subscribers, now=clock(), medium=medium)
            steps.append(step)
        return Trial(steps=steps)
    finally:
        db.dispose()


def _subscribe_to_every_topic(db: DB, *, now: datetime) -> list[SubscriptionRecord]:
    """One active ``id-only`` subscriber per topic, unfiltered: it hears everything the topic says."""
    records = [
        SubscriptionRecord(
            id=f"sandbox-{topic.code}",
            status="active",
            topic=topic.url,
            endpoint="urn:sandbox:preview",
            channel_type="rest-hook",
            payload_content="id-only",
            headers=[],
            filters=[],
            secret="sandbox",  # noqa: S106 - nothing is ever signed or sent from the sandbox
            events_since_start=0,
            error=None,
            created_at=now,
        )
        for topic in TOPICS
    ]
    with transaction(db) as conn:
        repo = SubscriptionRepo(conn)
        for record in records:
            repo.add(record)
    return records


def _drain(
    db: DB, subscribers: list[SubscriptionRecord], *, now: datetime, medium: JSON | None
) -> tuple[list[JSON], list[JSON]]:
    """The notification Bundles the last message queued, one per event, then marked delivered; and, for
    each event declaration (flux 3), the flux 4 order an NdE subscriber would receive instead."""
    bundles: list[JSON] = []
    orders: list[JSON] = []
    with transaction(db) as conn:
        outbox = OutboxRepo(conn)
        for sub in subscribers:
            rows = outbox.for_subscription(sub.id, statuses=["pending"])
            events = notification_events(conn, rows, payload_content=sub.payload_content)
            for row, event in zip(
                [r for r in rows if r.notification_type == "event-notification"], events, strict=False
            ):
                ctx = NotificationContext(
                    subscription_id=sub.id,
                    topic_url=sub.topic,
                    status="active",
                    notification_type="event-notification",
                    events_since_start=row.event_number,
                    payload_content=sub.payload_content,
                    base_url=PREVIEW_BASE,
                )
                bundle_id = f"{sub.id}-{row.event_number}"
                bundles.append(build_notification_bundle(ctx, [event], bundle_id=bundle_id, now=now))
                if sub.topic == DECLARATION_TOPIC:
                    orders += _nde_order(conn, row, now=now, medium=medium)
            outbox.delivered([row.id for row in rows], now=now)
    return bundles, orders


def _nde_order(conn: Connection, row: OutboxRecord, *, now: datetime, medium: JSON | None) -> list[JSON]:
    """The flux 4 order for one declaration event, as the delivery worker builds it (``notification_order``),
    for a preview NdE subscription whose Subscriber is an e-parcours platform."""
    if not row.focus_type or not row.focus_id:
        return []
    store = ResourceRepo(conn)
    found = store.vread(row.focus_type, row.focus_id, row.focus_version or 0) or store.get(row.focus_type, row.focus_id)
    if found is None:
        return []
    order = notification_order(
        declaration=found.content,
        subscription=PREVIEW_NDE_SUBSCRIPTION,
        subscription_url=f"{PREVIEW_BASE}/Subscription/{PREVIEW_NDE_SUBSCRIPTION['id']}",
        base_url=PREVIEW_BASE,
        event_number=row.event_number,
        emitted_at=now,
        medium=medium,
    )
    return [order]
