"""The delivery worker: drains the outbox, one subscription's events strictly in order, with retries.

Shape borrowed from procrastinate: a row is claimed in one statement (a lease on ``next_attempt_at``,
so two workers or two gateway instances never send the same row at once), delivered outside any
transaction, then its result recorded. Only the oldest pending row of a subscription is ever due, so
a later event cannot overtake an earlier one while that one waits for a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from sqlalchemy import Connection
from sqlalchemy import Engine as DB

from gateway.config import Settings
from gateway.db.repo import OutboxRecord, OutboxRepo, ResourceRepo, SubscriptionRecord, SubscriptionRepo
from gateway.subscriptions.channels import DeliveryResult, RestHookChannel, idempotency_key
from gateway.subscriptions.endpoints import check_endpoint
from gateway.subscriptions.notification import (
    NotificationContext,
    NotificationEvent,
    build_notification_bundle,
)
from gateway.subscriptions.retry import RetryPolicy
from gateway.subscriptions.service import set_status
from gateway.subscriptions.topics import BY_URL

logger = logging.getLogger(__name__)
HANDSHAKE_ATTEMPTS = 3
BATCH = 50


@dataclass(frozen=True, slots=True)
class Job:
    row: OutboxRecord
    subscription: SubscriptionRecord
    body: bytes
    bundle_id: str


def utcnow() -> datetime:
    return datetime.now(UTC)


class DeliveryWorker:
    """Run with :meth:`run` beside the servers; :meth:`run_once` is the unit the tests drive."""

    def __init__(
        self,
        *,
        db: DB,
        settings: Settings,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.client = client or httpx.AsyncClient(follow_redirects=False)
        self.channel = RestHookChannel(self.client, timeout=settings.delivery_timeout)
        self.policy = RetryPolicy(
            base=settings.retry_base,
            cap=settings.retry_cap,
            horizon=settings.retry_horizon or None,
        )
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.now = utcnow
        self.worker_id = uuid.uuid4().hex[:12]
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.delivered_total = 0
        self.failed_total = 0

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
            try:
                count = await self.run_once()
            except Exception:
                logger.exception("delivery worker iteration failed; carrying on")
                count = 0
            if count == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.worker_poll_interval)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def aclose(self) -> None:
        self.stop()
        await self.client.aclose()

    # -- one pass ---------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim due rows, deliver them (different subscriptions in parallel), record the results."""
        jobs = await asyncio.to_thread(self._claim)
        if not jobs:
            return 0
        results = await asyncio.gather(*(self._send(job) for job in jobs))
        await asyncio.to_thread(self._record, list(zip(jobs, results, strict=True)))
        return len(jobs)

    def _claim(self) -> list[Job]:
        now = self.now()
        lease = now + timedelta(seconds=self.settings.delivery_timeout + 30)
        jobs = []
        with self.db.begin() as conn:
            outbox, subs = OutboxRepo(conn), SubscriptionRepo(conn)
            for row in outbox.heads(now=now, limit=BATCH):
                if not outbox.claim(row.id, now=now, lease_until=lease):
                    continue
                sub = subs.get(row.subscription_id)
                if sub is None:
                    outbox.failed(row.id, error="subscription deleted", next_attempt_at=None)
                    continue
                bundle_id = uuid.uuid4().hex
                body = self._body(conn, row, sub, bundle_id=bundle_id, now=now)
                jobs.append(Job(row=row, subscription=sub, body=body, bundle_id=bundle_id))
        return jobs

    def _body(
        self, conn: Connection, row: OutboxRecord, sub: SubscriptionRecord, *, bundle_id: str, now: datetime
    ) -> bytes:
        events: list[NotificationEvent] = []
        if row.notification_type == "event-notification" and row.focus_type and row.focus_id:
            store = ResourceRepo(conn)
            focus = store.vread(row.focus_type, row.focus_id, row.focus_version or 0) or store.get(
                row.focus_type, row.focus_id
            )
            context_refs = tuple(str(c["reference"]) for c in row.context if c.get("reference"))
            context_resources = []
            if sub.payload_content == "full-resource":
                for ref in context_refs:
                    rtype, _, rid = ref.partition("/")
                    found = store.get(rtype, rid)
                    if found:
                        context_resources.append(found.content)
            topic = BY_URL.get(row.topic)
            events.append(
                NotificationEvent(
                    event_number=row.event_number,
                    timestamp=row.occurred_at,
                    focus_reference=f"{row.focus_type}/{row.focus_id}",
                    focus_resource=focus.content if focus else None,
                    additional_context=context_refs,
                    context_resources=tuple(context_resources),
                    event_code=topic.event_code if topic else None,
                )
            )
        ctx = NotificationContext(
            subscription_id=sub.id,
            topic_url=sub.topic,
            status="requested" if row.notification_type == "handshake" else sub.status,
            notification_type=row.notification_type,
            events_since_start=row.event_number if events else sub.events_since_start,
            payload_content=sub.payload_content,
            base_url=self.settings.public_base(),
        )
        bundle = build_notification_bundle(ctx, events, bundle_id=bundle_id, now=now)
        return orjson.dumps(bundle)

    async def _send(self, job: Job) -> DeliveryResult:
        sub = job.subscription
        refusal = await asyncio.to_thread(check_endpoint, sub.endpoint, allowlist=self.settings.endpoint_allowlist)
        if refusal:
            # DNS can change after registration: the endpoint is checked again before every send.
            return DeliveryResult(ok=False, status_code=None, error=f"endpoint refused: {refusal}", retryable=False)
        return await self.channel.send(
            endpoint=sub.endpoint,
            body=job.body,
            headers=sub.headers,
            secret=sub.secret,
            idempotency_key=idempotency_key(
                subscription_id=sub.id,
                event_number=job.row.event_number,
                notification_type=job.row.notification_type,
                bundle_id=job.bundle_id,
            ),
        )

    def _record(self, outcomes: list[tuple[Job, DeliveryResult]]) -> None:
        now = self.now()
        with self.db.begin() as conn:
            outbox = OutboxRepo(conn)
            for job, result in outcomes:
                row, sub = job.row, job.subscription
                if result.ok:
                    outbox.delivered(row.id, now=now)
                    self.delivered_total += 1
                    if row.notification_type == "handshake" and sub.status == "requested":
                        set_status(conn, sub.id, "active", now=now)
                    logger.info("delivered", extra={"subscription": sub.id, "event_number": row.event_number})
                    continue
                self.failed_total += 1
                error = result.error or "delivery failed"
                next_at = self._next_attempt(row, result, now=now)
                outbox.failed(row.id, error=error, next_attempt_at=next_at)
                logger.warning(
                    "delivery failed (%s), attempt %d",
                    error,
                    row.attempts + 1,
                    extra={"subscription": sub.id, "event_number": row.event_number},
                )
                if next_at is None:
                    reason = f"{row.notification_type} delivery failed: {error}"
                    set_status(conn, sub.id, "error", now=now, error=reason)

    def _next_attempt(self, row: OutboxRecord, result: DeliveryResult, *, now: datetime) -> datetime | None:
        attempt = row.attempts + 1
        if not result.retryable:
            return None
        if row.notification_type == "handshake" and attempt >= HANDSHAKE_ATTEMPTS:
            return None
        return self.policy.next_attempt(attempt=attempt, first_failure_at=row.occurred_at, now=now, rng=self.rng)
