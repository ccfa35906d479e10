"""``gateway worker``: the delivery worker alone in its process, so that delivery has a CPU of its own.

Ingest and delivery in one process share one interpreter lock: at a saturating feed the worker got a
share of one CPU that did not keep up with ingest. Run ``gateway serve`` with ``GATEWAY_RUN_WORKER=false``
and one or more ``gateway worker`` beside it (several against one PostgreSQL: rows are claimed ``FOR
UPDATE SKIP LOCKED``, one subscription's events stay in order). Woken across processes by PostgreSQL
``NOTIFY``, on SQLite by watching its ``data_version`` (``gateway.db.wakeup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from gateway import heap
from gateway.config import Settings
from gateway.db.engine import make_engine, migrate, safe_url
from gateway.mapping.engine import Engine
from gateway.subscriptions.worker import DeliveryWorker

logger = logging.getLogger(__name__)


def build(settings: Settings, *, poll: float | None = None) -> DeliveryWorker:
    """The worker as ``gateway serve`` builds it (tables validated first, store migrated), listening."""
    tables = Engine.from_directory(settings.mappings_dir).tables
    db = make_engine(settings, quick_lock_retry=True)  # SQLite: its writes meet ingest's, of another process
    migrate(db)
    return DeliveryWorker(
        db=db,
        settings=settings,
        mediums=tables.codes["ChannelType_to_Medium"],
        listen=True,
        poll_interval=poll,
    )


async def serve(worker: DeliveryWorker, *, stop: asyncio.Event) -> None:
    """Run ``worker`` until ``stop`` is set; deliveries in flight finish (within their deadline) first."""
    woken = {"postgresql": "NOTIFY", "sqlite": "commits seen in data_version"}.get(worker.db.dialect.name, "")
    logger.info(
        "gateway worker: store %s, woken by %s and a look every %g s",
        safe_url(str(worker.db.url)),
        woken if worker.listen else "nothing",
        worker.poll_interval,
    )
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
    heap.settle()

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
