"""Wiring: settings → database, tables, pipeline, worker, MLLP server. Built once per process, passed in."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine as DB

from gateway import logs
from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.hl7.mllp import MLLPServer
from gateway.mapping.engine import Engine
from gateway.metrics import record_message
from gateway.pipeline import Pipeline
from gateway.subscriptions.worker import DeliveryWorker

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: DB
    engine: Engine
    pipeline: Pipeline
    worker: DeliveryWorker
    mllp: MLLPServer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, run_migrations: bool = True) -> Runtime:
        """Validate the tables first (a bad table must stop start-up), then open and migrate the store."""
        engine = Engine.from_directory(settings.mappings_dir)
        db = make_engine(settings)
        if run_migrations:
            migrate(db)
        worker = DeliveryWorker(db=db, settings=settings, mediums=engine.tables.codes["ChannelType_to_Medium"])
        pipeline = Pipeline(engine=engine, db=db, on_commit=worker.wake)
        return cls(settings=settings, db=db, engine=engine, pipeline=pipeline, worker=worker)

    async def ingest(self, raw: bytes, *, transport: str) -> bytes:
        """The MLLP handler: the pipeline is synchronous (SQL), so it runs in a worker thread."""
        started = time.perf_counter()
        with logs.bound(control_id=logs.control_id_of(raw), transport=transport):
            outcome = await asyncio.to_thread(self.pipeline.ingest, raw, transport=transport)
        record_message(
            transport=transport, outcome=outcome.code, ack=outcome.ack, seconds=time.perf_counter() - started
        )
        return outcome.ack

    async def _mllp_ingest(self, raw: bytes) -> bytes:
        return await self.ingest(raw, transport="mllp")

    async def _oversize(self, prefix: bytes) -> bytes | None:
        limit = self.settings.max_message_bytes
        ack = await asyncio.to_thread(self.pipeline.reject_oversize, prefix, transport="mllp", limit=limit)
        record_message(transport="mllp", outcome="AR", ack=ack)
        return ack

    def worker_state(self) -> str:
        """``alive``, ``stalled`` (its loop has not turned for a long while), ``stopped`` or ``disabled``."""
        task = next((t for t in self._tasks if t.get_name() == "delivery-worker"), None)
        if task is None:
            return "disabled" if not self.settings.run_worker else "stopped"
        if task.done():
            return "stopped"
        # One iteration may legitimately last a whole batch of deliveries, each up to its deadline.
        stall = max(60.0, 3 * self.settings.delivery_timeout + 30.0)
        return "alive" if time.monotonic() - self.worker.last_beat < stall else "stalled"

    async def start(self, *, mllp: bool = True, worker: bool = True) -> None:
        if mllp:
            self.mllp = MLLPServer(
                self._mllp_ingest,
                host=self.settings.mllp_host,
                port=self.settings.mllp_port,
                max_message_bytes=self.settings.max_message_bytes,
                idle_timeout=self.settings.mllp_idle_timeout,
                frame_timeout=self.settings.mllp_frame_timeout,
                max_connections=self.settings.mllp_max_connections,
                max_connections_per_peer=self.settings.mllp_max_connections_per_peer,
                on_oversize=self._oversize,
            )
            await self.mllp.start()
            logger.info("MLLP listening on %s:%d", self.settings.mllp_host, self.mllp.port)
        if worker and self.settings.run_worker:
            self._tasks.append(asyncio.create_task(self.worker.run(), name="delivery-worker"))

    async def stop(self) -> None:
        if self.mllp is not None:
            await self.mllp.stop()
        self.worker.stop()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=15)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        self._tasks.clear()
        await self.worker.client.aclose()

    def close(self) -> None:
        self.db.dispose()
