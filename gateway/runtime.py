"""Wiring: settings → database, tables, pipeline, worker, MLLP server. Built once per process, passed in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway import logs
from gateway.auth.authorities import with_declared
from gateway.auth.clients import sandbox_facilities
from gateway.auth.gate import Gate
from gateway.auth.mllp import MllpBinding, context_from
from gateway.auth.tokens import TokenService, token_audience, token_issuer
from gateway.config import Settings
from gateway.db.access import ClientRepo
from gateway.db.engine import Database as DB
from gateway.db.engine import make_engine, migrate
from gateway.hl7.mllp import MLLPServer, current_peer
from gateway.mapping.engine import Engine
from gateway.mapping.tables import Tables
from gateway.metrics import record_message
from gateway.pipeline import Outcome, Pipeline
from gateway.subscriptions.worker import DeliveryWorker
from gateway.web.tenants import SandboxStore

logger = logging.getLogger(__name__)
AUTHORITIES_REFRESH_SECONDS = 60.0


@dataclass
class Runtime:
    settings: Settings
    db: DB
    engine: Engine
    pipeline: Pipeline
    worker: DeliveryWorker
    tokens: TokenService
    gate: Gate
    binding: MllpBinding
    mllp: MLLPServer | None = None
    #: Where sandbox senders' messages go (``GATEWAY_SANDBOX_DATABASE_URL``); ``None``: no sandbox tenants.
    sandbox: SandboxStore | None = None
    #: The MLLP listening socket bound by ``gateway serve --workers``' parent; ``None``: bind host and port.
    mllp_socket: socket.socket | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: the mapping tables as the files give them; the registry's declarations are laid over them
    _file_tables: Tables | None = None
    _refresh: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, *, run_migrations: bool = True) -> Runtime:
        """Validate the tables first (a bad table must stop start-up), then open and migrate the store."""
        engine = Engine.from_directory(settings.mappings_dir)
        # SQLite: its write lock is taken by trying every millisecond, not through SQLite's busy handler
        # (sleeps growing to 100 ms): a `gateway worker` or another instance's writes meet ingest's.
        db = make_engine(settings, quick_lock_retry=True)
        if run_migrations:
            migrate(db)
        worker = DeliveryWorker(db=db, settings=settings, mediums=engine.tables.codes["ChannelType_to_Medium"])
        pipeline = Pipeline(engine=engine, db=db, on_commit=worker.wake)
        pipeline.confidential_to_platforms = settings.confidential_platform_access
        pipeline.writers = settings.ingest_writers
        tokens = TokenService(
            db,
            issuer=token_issuer(settings),
            audience=token_audience(settings),
            lifetime=settings.token_lifetime,
            key=settings.token_signing_key,
        )
        gate = Gate(db, settings, tokens)
        runtime = cls(
            settings=settings,
            db=db,
            engine=engine,
            pipeline=pipeline,
            worker=worker,
            tokens=tokens,
            gate=gate,
            binding=MllpBinding(db, settings, gate),
            sandbox=SandboxStore.build(settings, engine=engine, run_migrations=run_migrations),
            _file_tables=engine.tables,
        )
        if run_migrations:
            runtime.refresh_authorities()
        return runtime

    def pipeline_for(self, raw: bytes, *, sandbox_tenant: bool = False) -> Pipeline:
        """The sandbox store's pipeline for a sandbox sender's message (an authenticated sandbox tenant,
        or a sandbox sender's MSH-3/MSH-4), else the real one."""
        if self.sandbox is not None and (sandbox_tenant or self.sandbox.takes(raw)):
            return self.sandbox.pipeline
        return self.pipeline

    def refresh_authorities(self) -> None:
        """Lay the senders' declared identifier domains over the file tables (a swap: maps in flight
        keep the tables they started with)."""
        assert self._file_tables is not None
        with self.db.connect() as conn:
            clients = ClientRepo(conn).list()
        self.engine.tables = with_declared(self._file_tables, clients)
        if self.sandbox is not None:
            self.sandbox.tenant_facilities = sandbox_facilities(clients)

    async def ingest(
        self, raw: bytes, *, transport: str, facilities: Callable[[], frozenset[str] | None] | None = None
    ) -> bytes:
        """The MLLP handler: the message's ACK (see :meth:`ingest_outcome`)."""
        return (await self.ingest_outcome(raw, transport=transport, facilities=facilities)).ack

    async def ingest_outcome(
        self,
        raw: bytes,
        *,
        transport: str,
        facilities: Callable[[], frozenset[str] | None] | None = None,
        sandbox_tenant: bool = False,
    ) -> Outcome:
        """One message from MLLP or HTTP: to its store's pipeline (:meth:`pipeline_for`), whose writer thread
        does the work while the loop only waits; logged with its control id, counted for ``/metrics``.

        ``facilities`` is evaluated in the writer thread, since it may read the store.
        """
        started = time.perf_counter()
        with logs.bound(control_id=logs.control_id_of(raw), transport=transport):
            pipeline = self.pipeline_for(raw, sandbox_tenant=sandbox_tenant)
            outcome = await pipeline.ingest_async(raw, transport=transport, facilities=facilities)
        record_message(
            transport=transport, outcome=outcome.code, ack=outcome.ack, seconds=time.perf_counter() - started
        )
        return outcome

    async def _mllp_ingest(self, raw: bytes) -> bytes:
        peer = current_peer()
        return await self.ingest(raw, transport="mllp", facilities=lambda: self.binding.facilities(peer))

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
                ssl_context=context_from(self.settings),
                sock=self.mllp_socket,
            )
            await self.mllp.start()
            logger.info("MLLP listening on %s:%d", self.settings.mllp_host, self.mllp.port)
        if worker and self.settings.run_worker:
            self._tasks.append(asyncio.create_task(self.worker.run(), name="delivery-worker"))
        self._refresh = asyncio.create_task(self._refresh_loop(), name="authorities-refresh")

    async def _refresh_loop(self) -> None:
        """Declarations made with ``gateway clients`` in another process reach this one within a minute."""
        while True:
            await asyncio.sleep(AUTHORITIES_REFRESH_SECONDS)
            try:
                await asyncio.to_thread(self.refresh_authorities)
            except Exception:
                logger.exception("could not refresh the senders' declared authorities")

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
            self._refresh = None
        if self.mllp is not None:
            await self.mllp.stop()
        await asyncio.to_thread(self.stop_writers)
        self.worker.stop()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=15)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        self._tasks.clear()
        await self.worker.client.aclose()

    def stop_writers(self) -> None:
        """Answer every message already submitted, then end the pipelines' writer threads."""
        self.pipeline.stop_writer()
        if self.sandbox is not None:
            self.sandbox.pipeline.stop_writer()

    def close(self) -> None:
        self.stop_writers()
        self.db.dispose()
        if self.sandbox is not None:
            self.sandbox.close()
