"""Delivery in a process of its own (``gateway worker``): woken across processes, stopped cleanly.

Two engines on one store stand for two processes: the ingest side (``run_worker=False``) announces what it
queued (PostgreSQL ``NOTIFY``), a listening worker with a poll far longer than the test wakes on it. The
command itself is started as a subprocess and stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import respx
from sqlalchemy import Engine, create_engine, insert, text

from gateway.config import Settings
from gateway.db.engine import make_engine, transaction
from gateway.db.repo import OutboxRepo
from gateway.db.schema import search_index
from gateway.db.wakeup import Announcer, announces, watches
from gateway.errors import StorageUnavailableError
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from gateway.subscriptions.service import create_subscription
from gateway.subscriptions.worker import DeliveryWorker
from tests.integration.test_worker import HOOK, subscription
from tests.messages import Adt

ROOT = Path(__file__).resolve().parents[2]
LONG_POLL = 60.0  # seconds: far beyond the test's own waits, so only a NOTIFY can wake the worker


@pytest.fixture
def ingest_side(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_worker": False})


@pytest.fixture
def other_db(settings: Settings) -> Iterator[Engine]:
    """A second engine on the same store: the worker's process."""
    engine = make_engine(settings)
    yield engine
    engine.dispose()


def _delivered(db: Engine, sub_id: str) -> list[str]:
    with db.connect() as conn:
        return [r.notification_type for r in OutboxRepo(conn).for_subscription(sub_id) if r.status == "delivered"]


async def _until(check: Callable[[], bool]) -> None:
    """Polls the store (another engine's writes): no event to wait on."""
    async with asyncio.timeout(10):
        for _ in range(1000):
            if check():
                return
            await asyncio.sleep(0.02)
    raise AssertionError("not reached in time")


def test_a_listening_worker_is_woken_by_the_ingest_of_another_process(
    db: Engine, other_db: Engine, ingest_side: Settings, settings: Settings, mapping_engine: MappingEngine
) -> None:
    """PostgreSQL: by the ingest side's NOTIFY, also after its listening connection was cut. SQLite: by the
    commit itself, seen in ``data_version``."""
    postgres = announces(db)
    ingest = DeliveryWorker(db=db, settings=ingest_side)
    assert (ingest.announcer is not None) == postgres
    pipeline = Pipeline(engine=mapping_engine, db=db, on_commit=ingest.wake)
    worker = DeliveryWorker(
        db=other_db, settings=settings, client=httpx.AsyncClient(), listen=True, poll_interval=LONG_POLL
    )
    assert worker.listen and worker.announcer is None  # its own wakes stay in its process

    async def main() -> None:
        with respx.mock(assert_all_mocked=True) as platform:
            platform.post(HOOK).respond(200)
            task = asyncio.create_task(worker.run())
            try:
                await asyncio.sleep(0.5)  # the worker's first pass and its LISTEN
                with transaction(db) as conn:
                    stored, _ = create_subscription(
                        conn, subscription(), allowlist=settings.endpoint_allowlist, now=ingest.now()
                    )
                ingest.wake()  # as the API does after creating a subscription
                await _until(lambda: _delivered(db, stored.id) == ["handshake"])

                outcome = await asyncio.to_thread(
                    pipeline.ingest, Adt(control_id="W-1", visit="V-W1", movement="M-W1").bytes(), transport="test"
                )
                assert outcome.code == "AA"
                await _until(lambda: _delivered(db, stored.id) == ["handshake", "event-notification"])

                if not postgres:
                    return
                # The listening connection is cut: the worker listens again and is woken again.
                with db.connect() as conn:
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid() AND datname = current_database()"
                        )
                    )
                await asyncio.sleep(1.5)
                outcome = await asyncio.to_thread(
                    pipeline.ingest, Adt(control_id="W-2", visit="V-W2", movement="M-W2").bytes(), transport="test"
                )
                assert outcome.code == "AA"
                await _until(lambda: _delivered(db, stored.id).count("event-notification") == 2)
            finally:
                worker.stop()
                await task
                await worker.client.aclose()

    asyncio.run(main())
    if ingest.announcer is not None:
        assert ingest.announcer.sent >= 2
        ingest.announcer.close()


def test_announcements_are_coalesced_while_one_is_being_sent() -> None:
    """Calls made while a NOTIFY is on the wire make one more NOTIFY, not one each."""
    announcer = Announcer(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def slow_notify() -> None:
        nonlocal calls
        calls += 1
        entered.set()
        release.wait(5)

    announcer._notify = slow_notify  # type: ignore[method-assign]
    first = threading.Thread(target=announcer.announce)
    first.start()
    assert entered.wait(5)
    for _ in range(5):
        announcer.announce()  # returns at once: one is being sent
    release.set()
    first.join(5)
    assert calls == 2
    announcer.announce()
    assert calls == 3


def test_a_failed_announcement_is_logged_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    announcer = Announcer(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    announcer.announce()
    assert announcer.sent == 0
    assert "could not announce" in caplog.text


def test_the_ingest_side_announces_only_on_postgresql_and_only_without_its_own_worker(
    db: Engine, ingest_side: Settings, settings: Settings
) -> None:
    assert (DeliveryWorker(db=db, settings=ingest_side).announcer is not None) == announces(db)
    assert DeliveryWorker(db=db, settings=settings).announcer is None


def test_only_a_file_store_is_watched(settings: Settings) -> None:
    assert not watches(make_engine(Settings(database_url="sqlite://")))
    assert watches(make_engine(settings)) == settings.database_url.startswith("sqlite")


@pytest.mark.e2e
def test_gateway_worker_runs_until_sigterm(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "worker", "--poll-interval", "0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "delivery worker" in line and "started" in line:
                break
        else:  # pragma: no cover - a failure's diagnostics
            pytest.fail("".join(seen))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, "".join(seen)
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert any("gateway worker: store" in line for line in seen), "".join(seen)


def test_a_quickly_retrying_writer_gets_the_lock_once_another_process_lets_it_go(tmp_path: Path) -> None:
    """SQLite: the write lock held by another connection (as ingest's, in another process) for 0.3 s; the
    worker's engine takes it soon after, by trying every millisecond, and gives up at its lock timeout."""
    path = tmp_path / "locks.db"
    settings = Settings(database_url=f"sqlite:///{path}", db_lock_timeout=1.0)
    engine = make_engine(settings, quick_lock_retry=True)
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.commit()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, other.execute, ["COMMIT"]).start()
        started = time.monotonic()
        with transaction(engine) as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        waited = time.monotonic() - started
        assert 0.25 < waited < 0.9

        other.execute("BEGIN IMMEDIATE")  # now held past the lock timeout
        with pytest.raises(StorageUnavailableError), transaction(engine) as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
        other.execute("COMMIT")
    finally:
        other.close()
        engine.dispose()


def test_an_engine_with_quick_retries_still_writes(settings: Settings) -> None:
    """On both stores (on PostgreSQL the option changes nothing): a write transaction commits."""
    db = make_engine(settings, quick_lock_retry=True)
    try:
        with transaction(db) as conn:
            conn.execute(insert(search_index).values(code=2, id="p-1", system="", value="true"))
        with db.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM search_index")).scalar() == 1
    finally:
        db.dispose()
