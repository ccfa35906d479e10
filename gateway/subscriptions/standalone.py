"""``gateway worker``: the delivery worker alone in its process, so that delivery has a CPU of its own.

Ingest and delivery in one process share one interpreter lock: at a saturating feed the worker got a
share of one CPU that did not keep up with ingest. Run ``gateway serve`` with ``GATEWAY_RUN_WORKER=false``
and one or more ``gateway worker`` beside it (several against one PostgreSQL: rows are claimed ``FOR
UPDATE SKIP LOCKED``, one subscription's events stay in order). Woken across processes by PostgreSQL
``NOTIFY`` (``gateway.db.wakeup``); on SQLite, which has nothing of the kind, by a short poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from gateway.config import Settings
from gateway.db.engine import Database as DB
from gateway.db.engine import make_engine, migrate, safe_url
from gateway.db.wakeup import announces
from gateway.mapping.engine import Engine
from gateway.subscriptions.worker import DeliveryWorker

logger = logging.getLogger(__name__)

#: Seconds between a SQLite worker's looks at the outbox when nothing woke it. Another process cannot wake
#: it, so this bounds what it adds to a notification's latency (half of it on average). Idle, a look is one
#: indexed read: ~20 a second cost about 1 % of a CPU (bench/README.md, "Issue 14, third session").
SQLITE_POLL_SECONDS = 0.05


def poll_interval(settings: Settings, db: DB, *, given: float | None = None) -> float:
    """``--poll-interval``, else ``GATEWAY_WORKER_POLL_INTERVAL`` when set, else :data:`SQLITE_POLL_SECONDS`
    on SQLite and the setting's default (a fallback for retries coming due) where ``NOTIFY`` wakes it."""
    if given is not None:
        return given
    if "worker_poll_interval" in settings.model_fields_set or announces(db):
        return settings.worker_poll_interval
    return SQLITE_POLL_SECONDS


def build(settings: Settings, *, poll: float | None = None) -> DeliveryWorker:
    """The worker as ``gateway serve`` builds it (tables validated first, store migrated), listening."""
    tables = Engine.from_directory(settings.mappings_dir).tables
    db = make_engine(settings)
    migrate(db)
    return DeliveryWorker(
        db=db,
        settings=settings,
        mediums=tables.codes["ChannelType_to_Medium"],
        listen=True,
        poll_interval=poll_interval(settings, db, given=poll),
    )


async def serve(worker: DeliveryWorker, *, stop: asyncio.Event) -> None:
    """Run ``worker`` until ``stop`` is set; deliveries in flight finish (within their deadline) first."""
    wake = "NOTIFY" if worker.listen else f"a poll every {worker.poll_interval:g} s"
    logger.info("gateway worker: store %s, woken by %s", safe_url(str(worker.db.url)), wake)
    task = asyncio.create_task(worker.run(), name="delivery-worker")
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        worker.stop()
        stopped.cancel()
        await task
        await worker.client.aclose()


def run(settings: Settings, *, poll: float | None = None) -> int:
    """``gateway worker``: until SIGTERM or SIGINT; exit status 0."""
    worker = build(settings, poll=poll)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await serve(worker, stop=stop)

    try:
        asyncio.run(main())
    finally:
        worker.db.dispose()
    return 0
