"""The delivery worker: drains the outbox, one subscription's events strictly in order, with retries.

Shape borrowed from procrastinate: rows are claimed with one conditional UPDATE each (a lease on
``next_attempt_at``, so two workers or two gateway instances never send the same row at once), delivered
outside any transaction, then their result recorded. Only the oldest pending row of a subscription is
ever due (plus, with ``maxCount``, the events right behind it, sent in the same notification), so a later
event cannot overtake an earlier one while that one waits for a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from sqlalchemy import Connection
from sqlalchemy import Engine as DB

from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.db.repo import OutboxRecord, OutboxRepo, ResourceRepo, SubscriptionRecord, SubscriptionRepo
from gateway.mapping.tables import CodeRow
from gateway.metrics import record_delivery
from gateway.subscriptions import nde_order
from gateway.subscriptions.channels import DeliveryResult, RestHookChannel, delivery_client, idempotency_key
from gateway.subscriptions.email import EmailChannel, notice
from gateway.subscriptions.endpoints import vet_endpoint
from gateway.subscriptions.notification import NotificationContext, NotificationEvent, build_notification_bundle
from gateway.subscriptions.retry import RetryPolicy
from gateway.subscriptions.service import expire_ended, set_status
from gateway.subscriptions.topics import BY_URL

logger = logging.getLogger(__name__)
HANDSHAKE_ATTEMPTS = 3
HEARTBEAT_CHECK_SECONDS = 1.0
BATCH = 50


@dataclass(frozen=True, slots=True)
class Job:
    rows: list[OutboxRecord]
    subscription: SubscriptionRecord
    body: bytes
    bundle_id: str
    subject: str = ""
    text: str = ""

    @property
    def head(self) -> OutboxRecord:
        return self.rows[0]


def _heartbeat_due(sub: SubscriptionRecord, now: datetime) -> bool:
    last = sub.last_sent_at or sub.created_at
    return bool(sub.heartbeat_period) and last + timedelta(seconds=sub.heartbeat_period or 0) <= now


def utcnow() -> datetime:
    return datetime.now(UTC)


def notification_events(conn: Connection, rows: list[OutboxRecord], *, payload_content: str) -> list[NotificationEvent]:
    """The events of outbox rows, with the focus at the version that triggered each (for full-resource)."""
    store = ResourceRepo(conn)
    events = []
    for row in rows:
        if row.notification_type != "event-notification" or not (row.focus_type and row.focus_id):
            continue
        focus = None
        context_resources = []
        context_refs = tuple(str(c["reference"]) for c in row.context if c.get("reference") and not c.get("change"))
        changes = tuple((str(c["change"]), str(c["reference"])) for c in row.context if c.get("change"))
        if payload_content == "full-resource":
            found = store.vread(row.focus_type, row.focus_id, row.focus_version or 0) or store.get(
                row.focus_type, row.focus_id
            )
            focus = found.content if found else None
            for ref in context_refs:
                rtype, _, rid = ref.partition("/")
                context = store.get(rtype, rid)
                if context:
                    context_resources.append(context.content)
        topic = BY_URL.get(row.topic)
        events.append(
            NotificationEvent(
                event_number=row.event_number,
                timestamp=row.occurred_at,
                focus_reference=f"{row.focus_type}/{row.focus_id}",
                focus_resource=focus,
                additional_context=context_refs,
                context_resources=tuple(context_resources),
                event_code=topic.event_code if topic else None,
                member_changes=changes,
            )
        )
    return events


class DeliveryWorker:
    """Run with :meth:`run` beside the servers; :meth:`run_once` is the unit the tests drive."""

    def __init__(
        self,
        *,
        db: DB,
        settings: Settings,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        mediums: Mapping[str, CodeRow] | None = None,
    ) -> None:
        self.db = db
        #: ANS NdE flux 4 ``medium`` by channel type (mappings/codes/ChannelType_to_Medium.csv)
        self.mediums = mediums or {}
        self.settings = settings
        self.client = client or delivery_client()
        self.rest_hook = RestHookChannel(self.client, timeout=settings.delivery_timeout)
        self.email = EmailChannel(settings)
        self.policy = RetryPolicy(
            base=settings.retry_base, cap=settings.retry_cap, horizon=settings.retry_horizon or None
        )
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.now = utcnow
        self.worker_id = uuid.uuid4().hex[:12]
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_heartbeat_check = datetime.min.replace(tzinfo=UTC)
        self.delivered_total = 0
        self.failed_total = 0
        #: ``time.monotonic()`` at the start of the last loop iteration: readiness checks the loop turns.
        self.last_beat = time.monotonic()

    # -- control ----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Called from ingest threads after a commit that queued notifications: deliver now."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        logger.info("delivery worker %s started", self.worker_id)
        while not self._stopping:
            # Cleared before looking, not after: a wake() that comes while run_once finds nothing (the
            # ingest commits meanwhile) must cut the wait short, not be lost for a whole poll interval.
            self._wake.clear()
            self.last_beat = time.monotonic()
            try:
                await asyncio.to_thread(self._queue_heartbeats)
                count = await self.run_once()
            except Exception:
                logger.exception("delivery worker iteration failed; carrying on")
                count = 0
            if count == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.worker_poll_interval)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- one pass ---------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim due rows, deliver them (different subscriptions in parallel), record the results."""
        jobs = await asyncio.to_thread(self._claim)
        if not jobs:
            return 0
        results = await asyncio.gather(*(self._timed_send(job) for job in jobs))
        await asyncio.to_thread(self._record, list(zip(jobs, results, strict=True)))
        return len(jobs)

    def _queue_heartbeats(self) -> None:
        """An active subscription with a heartbeat period hears from us at least that often."""
        now = self.now()
        if now < self._next_heartbeat_check:
            return
        self._next_heartbeat_check = now + timedelta(seconds=HEARTBEAT_CHECK_SECONDS)
        with self.db.connect() as conn:
            ended = SubscriptionRepo(conn).ended(now=now)
        if ended:
            with transaction(self.db) as conn:
                expire_ended(conn, now=now)
        with self.db.connect() as conn:
            due = [s for s in SubscriptionRepo(conn).with_heartbeat() if _heartbeat_due(s, now)]
        if not due:
            return
        with transaction(self.db) as conn:
            subs, outbox = SubscriptionRepo(conn), OutboxRepo(conn)
            for sub in due:
                if outbox.has_pending(sub.id):
                    continue  # a pending notification will tell the platform we are alive
                outbox.add(
                    subscription_id=sub.id,
                    event_number=0,
                    notification_type="heartbeat",
                    topic=sub.topic,
                    occurred_at=now,
                )
                subs.sent(sub.id, now=now)

    def _claim(self) -> list[Job]:
        now = self.now()
        jobs = []
        with transaction(self.db) as conn:
            outbox, subs = OutboxRepo(conn), SubscriptionRepo(conn)
            for head in outbox.heads(now=now, limit=BATCH):
                sub = subs.get(head.subscription_id)
                if sub is None:
                    continue
                lease = now + timedelta(seconds=self._timeout(sub) + 30)
                if not outbox.claim(head.id, now=now, lease_until=lease):
                    continue
                rows = [head]
                if head.notification_type == "event-notification" and (sub.max_count or 1) > 1:
                    for row in outbox.following(head, limit=(sub.max_count or 1) - 1):
                        if outbox.claim(row.id, now=now, lease_until=lease):
                            rows.append(row)
                jobs.append(self._job(conn, rows, sub, now=now))
        return jobs

    def _timeout(self, sub: SubscriptionRecord) -> float:
        return float(sub.timeout) if sub.timeout else self.settings.delivery_timeout

    def _job(self, conn: Connection, rows: list[OutboxRecord], sub: SubscriptionRecord, *, now: datetime) -> Job:
        head = rows[0]
        base_url = self.settings.public_base()
        order = nde_order.build_order(conn, rows, sub, base_url=base_url, mediums=self.mediums)
        if order is not None:  # ANS NdE dialect: a flux 4 CommunicationRequest instead of a Bundle
            return Job(rows=rows, subscription=sub, body=order.body, bundle_id=order.id)
        events = notification_events(conn, rows, payload_content=sub.payload_content)
        ctx = NotificationContext(
            subscription_id=sub.id,
            topic_url=sub.topic,
            status="requested" if head.notification_type == "handshake" else sub.status,
            notification_type=head.notification_type,
            events_since_start=rows[-1].event_number if events else sub.events_since_start,
            payload_content=sub.payload_content,
            base_url=self.settings.public_base(),
        )
        bundle_id = uuid.uuid4().hex
        body = orjson.dumps(build_notification_bundle(ctx, events, bundle_id=bundle_id, now=now))
        if sub.channel_type != "email":
            return Job(rows=rows, subscription=sub, body=body, bundle_id=bundle_id)
        topic = BY_URL.get(sub.topic)
        base = self.settings.public_base()
        subject, text = notice(
            topic_title=topic.title if topic else sub.topic,
            notification_type=head.notification_type,
            events=[
                (
                    e.event_number,
                    e.timestamp.isoformat(),
                    f"{base}/{e.focus_reference}" if sub.payload_content == "id-only" else None,
                )
                for e in events
            ],
            status_url=f"{base}/Subscription/{sub.id}/$status",
        )
        return Job(rows=rows, subscription=sub, body=body, bundle_id=bundle_id, subject=subject, text=text)

    async def _timed_send(self, job: Job) -> DeliveryResult:
        started = time.perf_counter()
        result = await self._send(job)
        seconds = time.perf_counter() - started
        record_delivery(
            channel=job.subscription.channel_type,
            notification_type=job.head.notification_type,
            ok=result.ok,
            seconds=seconds,
        )
        return result

    async def _send(self, job: Job) -> DeliveryResult:
        sub = job.subscription
        # Handshakes and heartbeats carry event number 0: each gets its own key, not a shared "<id>:0"
        # that a deduplicating receiver (or a mail server, through the Message-ID) would drop.
        is_event = job.head.notification_type == "event-notification"
        key = idempotency_key(
            subscription_id=sub.id,
            event_number=job.rows[-1].event_number if is_event else None,
            notification_type=job.head.notification_type,
            bundle_id=job.bundle_id,
        )
        if sub.channel_type == "email":
            return await self.email.send(endpoint=sub.endpoint, subject=job.subject, text=job.text, idempotency_key=key)
        vetted = await asyncio.to_thread(vet_endpoint, sub.endpoint, allowlist=self.settings.endpoint_allowlist)
        if vetted.refusal:
            # DNS can change after registration: the endpoint is checked again before every send, and the
            # connection goes to the address checked here (no second resolution that rebinding could change).
            error = f"endpoint refused: {vetted.refusal}"
            return DeliveryResult(ok=False, status_code=None, error=error, retryable=False)
        channel = self.rest_hook if not sub.timeout else RestHookChannel(self.client, timeout=self._timeout(sub))
        result = await channel.send(
            endpoint=nde_order.target(sub),  # the same host as sub.endpoint: the vetted address holds
            body=job.body,
            headers=sub.headers,
            secret=sub.secret,
            idempotency_key=key,
            address=vetted.address,
        )
        return nde_order.judge(sub, result)

    def _record(self, outcomes: list[tuple[Job, DeliveryResult]]) -> None:
        now = self.now()
        with transaction(self.db) as conn:
            for job, result in outcomes:
                if result.ok:
                    self._delivered(conn, job, now=now)
                else:
                    self._failed(conn, job, result, now=now)

    def _delivered(self, conn: Connection, job: Job, *, now: datetime) -> None:
        outbox, sub = OutboxRepo(conn), job.subscription
        for row in job.rows:
            outbox.delivered(row.id, now=now)
        SubscriptionRepo(conn).sent(sub.id, now=now)
        self.delivered_total += len(job.rows)
        if job.head.notification_type == "handshake":
            # Judge on the subscription as it is now, not as claimed: a PUT (new endpoint, or off) or a
            # DELETE while the handshake was in flight wins, and a new endpoint needs its own handshake.
            current = SubscriptionRepo(conn).get(sub.id)
            if current is not None and current.endpoint == sub.endpoint:
                outbox.drop_handshakes(sub.id)
                if current.status == "requested":
                    set_status(conn, sub.id, "active", now=now)
        logger.info("delivered %d row(s)", len(job.rows), extra={"subscription": sub.id})

    def _failed(self, conn: Connection, job: Job, result: DeliveryResult, *, now: datetime) -> None:
        outbox, sub, head = OutboxRepo(conn), job.subscription, job.head
        self.failed_total += 1
        error = result.error or "delivery failed"
        next_at = self._next_attempt(head, result, now=now)
        for row in job.rows:
            # Give-up leaves rows pending: they stay in line, readable through $events, and go out in
            # order once the subscription is reactivated. Only the subscription changes state.
            outbox.failed(row.id, error=error, next_attempt_at=next_at or now, now=now)
        logger.warning("delivery failed (%s), attempt %d", error, head.attempts + 1, extra={"subscription": sub.id})
        current = SubscriptionRepo(conn).get(sub.id)
        changed = current is None or (current.endpoint, current.status) != (sub.endpoint, sub.status)
        if next_at is None and not changed:
            set_status(conn, sub.id, "error", now=now, error=f"{head.notification_type} delivery failed: {error}")

    def _next_attempt(self, row: OutboxRecord, result: DeliveryResult, *, now: datetime) -> datetime | None:
        attempt = row.attempts + 1
        if not result.retryable:
            return None
        if row.notification_type == "handshake" and attempt >= HANDSHAKE_ATTEMPTS:
            return None
        since = row.retry_since or now
        return self.policy.next_attempt(attempt=attempt, first_failure_at=since, now=now, rng=self.rng)
