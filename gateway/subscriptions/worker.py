"""The delivery worker: drains the outbox, one subscription's events strictly in order, with retries.

Shape borrowed from procrastinate: due rows are claimed in one statement (``UPDATE … WHERE id IN (SELECT …
FOR UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL, the same statement without the lock clause on SQLite's
single writer), which moves their ``next_attempt_at`` to a lease, so two workers or two gateway instances
never send the same row at once; they are delivered outside any transaction, then their result recorded.
Only the oldest pending row of a subscription is ever due (plus, with ``maxCount``, the events right behind
it, sent in the same notification), so a later event cannot overtake an earlier one while it waits for a
retry. :meth:`DeliveryWorker.run` leases a subscription's next notifications with its head as one run
(:data:`RUN_AHEAD`), sends them one after another and records them together: one commit per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx

from gateway.auth.audit import event_patient, notification_records
from gateway.clock import utcnow
from gateway.config import Settings
from gateway.db.access import AuditRepo
from gateway.db.engine import Database as DB
from gateway.db.engine import DbConnection as Connection
from gateway.db.engine import reading, transaction
from gateway.db.repo import OutboxRecord, OutboxRepo, ResourceRepo, SubscriptionRecord, SubscriptionRepo
from gateway.db.wakeup import Announcer, announces, listen, watch, watches
from gateway.mapping.tables import CodeRow
from gateway.metrics import record_delivery
from gateway.subscriptions import nde_order
from gateway.subscriptions.channels import DeliveryResult, delivery_client, idempotency_key
from gateway.subscriptions.delivery import DEFAULT_CHANNEL, Channel, Notice, Outgoing, channels
from gateway.subscriptions.notification import NotificationContext, NotificationEvent, build_notification_bundle
from gateway.subscriptions.retry import RetryPolicy
from gateway.subscriptions.service import expire_ended, set_status
from gateway.subscriptions.topics import BY_URL

logger = logging.getLogger(__name__)
HANDSHAKE_ATTEMPTS = 3
HEARTBEAT_CHECK_SECONDS = 1.0
BATCH = 50
#: Seconds a lease outlives the request's own deadline: a worker that dies mid-send frees its rows after it.
LEASE_MARGIN = 30
#: Threads of the worker's own pool for its database work and DNS checks. Not the loop's default pool:
#: ingest holds those threads while its messages wait for their group commit, and the worker, queued
#: behind them, delivered 5 events/s while a saturating feed lasted, 90/s once it stopped.
THREADS = 4
#: Notifications of one subscription leased together by :meth:`DeliveryWorker.run`: sent one after another
#: (each once the previous one was answered 2xx: order holds), then recorded in one transaction that also
#: leases the next run. Under a backlog this turns one commit and ~6 statements per notification into one
#: commit per run; with little pending a run is as long as what is pending (often one).
RUN_AHEAD = 25
#: Seconds after which a run sends no more (the rest is released, due at once): results are recorded at
#: least this often, and the last send of a run ends before the head's lease does (timeout + LEASE_MARGIN).
RUN_SECONDS = 1.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Job:
    rows: list[OutboxRecord]
    subscription: SubscriptionRecord
    outgoing: Outgoing
    bundle_id: str

    @property
    def head(self) -> OutboxRecord:
        return self.rows[0]


def _heartbeat_due(sub: SubscriptionRecord, now: datetime) -> bool:
    last = sub.last_sent_at or sub.created_at
    return bool(sub.heartbeat_period) and last + timedelta(seconds=sub.heartbeat_period or 0) <= now


def _audit_delivery(conn: Connection, job: Job, *, now: datetime) -> None:
    """A notification sent is an access to patient data: recorded with the delivery, same transaction."""
    sent = [
        (f"{r.focus_type}/{r.focus_id}", event_patient(r.focus_type, r.focus_id, r.context))
        for r in job.rows
        if r.focus_type and r.focus_id
    ]
    if sent:
        owner = job.subscription.owner or "operator"
        records = notification_records(
            client_id=owner, client_name=owner, patients=sent, topic=job.subscription.topic, now=now
        )
        AuditRepo(conn).add(records)


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
        listen: bool = False,
        poll_interval: float | None = None,
    ) -> None:
        self.db = db
        #: Be woken by other processes' commits as well as by :meth:`wake` (PostgreSQL ``LISTEN``; SQLite's
        #: ``data_version`` watched): what ``gateway worker`` does, as its ingest runs elsewhere.
        self.listen = listen and (announces(db) or watches(db))
        #: Seconds between looks at the outbox when nothing woke the worker: retries coming due, and what
        #: a lost wake-up missed.
        self.poll_interval = poll_interval if poll_interval is not None else settings.worker_poll_interval
        #: With the worker elsewhere (``GATEWAY_RUN_WORKER=false``), :meth:`wake` tells other processes.
        self.announcer = Announcer(db) if not settings.run_worker and announces(db) else None
        #: ANS NdE flux 4 ``medium`` by channel type (mappings/codes/ChannelType_to_Medium.csv)
        self.mediums = mediums or {}
        self.settings = settings
        self.client = client or delivery_client()
        #: threads start on first use and end when the worker is collected
        self.threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="delivery")
        self.channels = channels(settings, self.client, executor=self.threads)
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
        self._inflight: set[asyncio.Task[None]] = set()
        #: Rows delivered, for ``/metrics`` (``gateway.metrics.ServiceCollector``); failed attempts are
        #: counted where they happen, by ``record_delivery``.
        self.delivered_total = 0
        #: ``time.monotonic()`` at the start of the last loop iteration: readiness checks the loop turns.
        self.last_beat = time.monotonic()

    # -- control ----------------------------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """``asyncio.to_thread`` on the worker's own threads (see :data:`THREADS`)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.threads, call)

    def wake(self) -> None:
        """Called from ingest threads (and API routes) after a commit that queued notifications: deliver
        now; with no worker running in this process, announce it to the workers of others (PostgreSQL)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)
        elif self.announcer is not None:
            self.threads.submit(self.announcer.announce)  # the caller does not wait for the round trip

    async def run(self) -> None:
        """Deliver until stopped; each claimed job runs on its own, so a slow endpoint holds only its
        own subscription (whose next row stays behind the lease of the one in flight: order is kept)."""
        self._loop = asyncio.get_running_loop()
        logger.info("delivery worker %s started", self.worker_id)
        inflight = self._inflight
        listener = None
        if self.listen:
            waiting = listen(self.db, self._wake.set) if announces(self.db) else watch(self.db, self._wake.set)
            listener = asyncio.create_task(waiting)
        try:
            while not self._stopping:
                # Cleared before looking, not after: a wake() that comes while the claim finds nothing (the
                # ingest commits meanwhile) must cut the wait short, not be lost for a whole poll interval.
                self._wake.clear()
                self.last_beat = time.monotonic()
                count = await self.dispatch()
                if count == 0 and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            if inflight:
                await asyncio.wait(inflight, timeout=self.settings.delivery_timeout)
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def dispatch(self) -> int:
        """One pass of :meth:`run`: claim what is due (up to the free slots) and start one task per job,
        without waiting for them; the number started. (:meth:`run_once` is the pass that waits.)"""
        inflight = self._inflight
        free = BATCH - len(inflight)
        if free <= 0:
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            return 1
        try:
            await self._off_loop(self._queue_heartbeats)
            runs = await self._off_loop(self._claim_runs, limit=free)
        except Exception:
            logger.exception("delivery worker iteration failed; carrying on")
            return 0
        for run in runs:
            task = asyncio.create_task(self._deliver(run))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        return len(runs)

    async def _deliver(self, run: list[Job]) -> None:
        """Send a run of one subscription's jobs in order and record them; while it has more due, go on.

        Each job is sent once the previous one was answered 2xx; the first failure ends the run (what is
        behind it is released, still behind it). Recording the run and leasing the subscription's next
        one share one write transaction, and the next run starts without waiting for a dispatch pass.
        Order holds: the next run is leased only once the previous one is recorded.
        """
        current = run
        try:
            while current and not self._stopping:
                sent, failure = await self._send_run(current)
                current = await self._off_loop(self._record_run, current, sent, failure)
        except Exception:
            logger.exception("delivery failed unexpectedly; the rows are retried once their lease ends")
        self._wake.set()

    async def _send_run(self, run: list[Job]) -> tuple[list[Job], tuple[Job, DeliveryResult] | None]:
        """The jobs answered 2xx, in order, and the failure that ended the run (``None``: none failed)."""
        sent: list[Job] = []
        started = time.monotonic()
        for job in run:
            if sent and (self._stopping or time.monotonic() - started > RUN_SECONDS):
                break
            result = await self._timed_send(job)
            if not result.ok:
                return sent, (job, result)
            sent.append(job)
        return sent, None

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- one pass ---------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim due rows, deliver them (different subscriptions in parallel), record the results."""
        jobs = await self._off_loop(self._claim)
        if not jobs:
            return 0
        results = await asyncio.gather(*(self._timed_send(job) for job in jobs))
        await self._off_loop(self._record, list(zip(jobs, results, strict=True)))
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

    def _claim(self, *, limit: int = BATCH) -> list[Job]:
        """Lease due heads (one job each) as :meth:`run_once` sends them: see :meth:`_claim_runs`."""
        return [job for run in self._claim_runs(limit=limit, ahead=1) for job in run]

    def _claim_runs(self, *, limit: int = BATCH, ahead: int = RUN_AHEAD) -> list[list[Job]]:
        """Lease due rows in one short write transaction, up to ``ahead`` notifications per subscription;
        build their payloads after it, from a read connection, so that the write lock (SQLite's only one)
        is not held while Bundles are built."""
        now = self.now()
        with reading(self.db) as conn:
            if not OutboxRepo(conn).any_due(now=now):
                return []  # every wake of a busy ingest finds this: no write lock taken against it
        with transaction(self.db) as conn:
            outbox = OutboxRepo(conn)
            heads = outbox.claim_heads(now=now, lease_until=self._lease(now), limit=limit)
            subs = SubscriptionRepo(conn).get_many(head.subscription_id for head in heads)
            claimed = [
                self._batch(outbox, head, subs.get(head.subscription_id), now=now, ahead=ahead) for head in heads
            ]
        return self._runs([c for c in claimed if c is not None], now=now)

    def _record_run(self, run: list[Job], sent: list[Job], failure: tuple[Job, DeliveryResult] | None) -> list[Job]:
        """Record a run (what was delivered, the failure that ended it, the rest released) and, unless it
        failed or the worker stops, lease the subscription's next run: one transaction."""
        now = self.now()
        done = {id(job) for job in sent} | ({id(failure[0])} if failure else set())
        unsent = [row.id for job in run if id(job) not in done for row in job.rows]
        sub = run[0].subscription
        with transaction(self.db) as conn:
            outbox = OutboxRepo(conn)
            if sent:  # recorded as one notification: the run's rows, audited and marked together
                rows = [row for job in sent for row in job.rows]
                self._delivered(conn, Job(rows, sub, sent[0].outgoing, sent[0].bundle_id), now=now)
            if failure is not None:
                self._failed(conn, failure[0], failure[1], now=now)
            outbox.release(unsent, now=now)
            if failure is not None or self._stopping:
                return []
            head = outbox.claim_head_of(sub.id, now=now, lease_until=self._lease(now))
            current = SubscriptionRepo(conn).get(sub.id) if head is not None else None
            claimed = self._batch(outbox, head, current, now=now, ahead=RUN_AHEAD) if head is not None else None
        runs = self._runs([claimed] if claimed is not None else [], now=now)
        return runs[0] if runs else []

    def _lease(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.delivery_timeout + LEASE_MARGIN)

    def _batch(
        self,
        outbox: OutboxRepo,
        head: OutboxRecord,
        sub: SubscriptionRecord | None,
        *,
        now: datetime,
        ahead: int = 1,
    ) -> tuple[list[OutboxRecord], SubscriptionRecord] | None:
        """A leased head with the events behind it (``maxCount`` per notification, ``ahead``
        notifications), its lease stretched to a longer own timeout; ``None`` when the subscription was
        deleted meanwhile (its rows go with it)."""
        if sub is None:
            return None
        rows = [head]
        following = (sub.max_count or 1) * ahead - 1
        if head.notification_type == "event-notification" and following > 0:
            rows += outbox.claim_following(head, lease_until=self._lease(now), limit=following)
        if self._timeout(sub) > self.settings.delivery_timeout:
            longer = now + timedelta(seconds=self._timeout(sub) + LEASE_MARGIN)
            outbox.extend_lease([r.id for r in rows], lease_until=longer)
        return rows, sub

    def _runs(self, claimed: list[tuple[list[OutboxRecord], SubscriptionRecord]], *, now: datetime) -> list[list[Job]]:
        """Each subscription's leased rows as its run of jobs, ``maxCount`` rows a notification."""
        if not claimed:
            return []
        runs = []
        with reading(self.db) as conn:
            for rows, sub in claimed:
                size = sub.max_count or 1
                runs.append([self._job(conn, rows[i : i + size], sub, now=now) for i in range(0, len(rows), size)])
        return runs

    def _timeout(self, sub: SubscriptionRecord) -> float:
        return float(sub.timeout) if sub.timeout else self.settings.delivery_timeout

    def _job(self, conn: Connection, rows: list[OutboxRecord], sub: SubscriptionRecord, *, now: datetime) -> Job:
        head = rows[0]
        base_url = self.settings.public_base()
        order = nde_order.build_order(conn, rows, sub, base_url=base_url, mediums=self.mediums)
        if order is not None:  # ANS NdE dialect: a flux 4 CommunicationRequest instead of a Bundle
            return Job(rows=rows, subscription=sub, outgoing=Outgoing(body=order.body), bundle_id=order.id)
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
        bundle = build_notification_bundle(ctx, events, bundle_id=bundle_id, now=now)
        notice = Notice(
            subscription=sub,
            notification_type=head.notification_type,
            events=events,
            bundle=bundle,
            base_url=self.settings.public_base(),
        )
        return Job(rows=rows, subscription=sub, outgoing=self._channel(sub).build(notice), bundle_id=bundle_id)

    def _channel(self, sub: SubscriptionRecord) -> Channel:
        return self.channels.get(sub.channel_type) or self.channels[DEFAULT_CHANNEL]

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
        return await self._channel(sub).send(sub, job.outgoing, key=key)

    def _record(self, outcomes: list[tuple[Job, DeliveryResult]]) -> None:
        now = self.now()
        with transaction(self.db) as conn:
            for job, result in outcomes:
                self._outcome(conn, job, result, now=now)

    def _outcome(self, conn: Connection, job: Job, result: DeliveryResult, *, now: datetime) -> None:
        if result.ok:
            self._delivered(conn, job, now=now)
        else:
            self._failed(conn, job, result, now=now)

    def _delivered(self, conn: Connection, job: Job, *, now: datetime) -> None:
        outbox, sub = OutboxRepo(conn), job.subscription
        outbox.delivered([row.id for row in job.rows], now=now)
        SubscriptionRepo(conn).sent(sub.id, now=now)
        _audit_delivery(conn, job, now=now)
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
