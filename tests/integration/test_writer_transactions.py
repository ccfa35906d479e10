"""The writer's transactions: ``BEGIN IMMEDIATE`` on the DB-API cursor, the connection a writer keeps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from gateway.config import Settings
from gateway.db import engine as engine_module
from gateway.db import schema
from gateway.db.engine import KeptConnection, make_engine, transaction
from gateway.errors import StorageUnavailableError
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def test_begin_immediate_is_seen_by_the_statement_listeners(tmp_path: Path) -> None:
    """BEGIN goes on the DB-API cursor, and the cursor listeners (the statement-count pins) still see it."""
    db = make_engine(Settings(database_url=f"sqlite:///{tmp_path / 'begin.db'}", data_dir=tmp_path))
    seen: list[str] = []

    @event.listens_for(db, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        seen.append(f"before {statement}")

    @event.listens_for(db, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        seen.append(f"after {statement}")

    with transaction(db) as conn:
        assert conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
    db.dispose()
    assert seen == ["before BEGIN IMMEDIATE", "after BEGIN IMMEDIATE"]


@pytest.mark.parametrize("quick", [False, True])
def test_a_write_lock_held_elsewhere_is_storage_unavailable(tmp_path: Path, quick: bool) -> None:
    """Another process's writer holding the lock past the timeout: the driver's error is mapped as before
    (``StorageUnavailableError``, retried by the caller), with SQLite's busy handler or the quick retry."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'lock.db'}", data_dir=tmp_path, db_lock_timeout=0.05)
    holder, writer = make_engine(settings), make_engine(settings, quick_lock_retry=quick)
    try:
        with transaction(holder), pytest.raises(StorageUnavailableError), transaction(writer):
            pass  # pragma: no cover (BEGIN IMMEDIATE fails first)
        with transaction(writer) as conn:  # and the same connection serves once the lock is free
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        holder.dispose()
        writer.dispose()


# -- the connection a writer keeps ---------------------------------------------------------------------------


def stay(k: int) -> list[bytes]:
    """Admission then discharge of a new patient's stay."""
    ipp, visit = f"6{k:05d}", f"V-6{k:04d}"
    return [
        Adt(control_id=f"K-{k}-1", ipp=ipp, visit=visit, movement=f"M-{k}-1").bytes(),
        Adt(
            trigger="A03", control_id=f"K-{k}-2", ipp=ipp, visit=visit, movement=f"M-{k}-2", discharge_time="20260302"
        ).bytes(),
    ]


def applied(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).where(schema.messages.c.status == "applied")).scalar_one())


@pytest.fixture
def pipeline(db: Engine, mapping_engine: MappingEngine) -> Iterator[Pipeline]:
    p = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    yield p
    p.stop_writer()


def checkouts(db: Engine) -> list[object]:
    """The pool's checkouts from now on."""
    seen: list[object] = []
    event.listen(db, "checkout", lambda dbapi_conn, record, proxy: seen.append(record))
    return seen


def submit_group(pipeline: Pipeline, raws: list[bytes]) -> list[str]:
    return [f.result(timeout=60).code for f in [pipeline.submit(raw, transport="test") for raw in raws]]


def test_the_writer_keeps_one_connection_across_groups_and_gives_it_back_on_stop(
    pipeline: Pipeline, db: Engine
) -> None:
    pipeline.start_writer(1)
    assert submit_group(pipeline, stay(0)) == ["AA", "AA"]
    seen = checkouts(db)
    for k in range(1, 4):
        assert submit_group(pipeline, stay(k)) == ["AA", "AA"]
    assert seen == []  # three more groups, or messages alone: no checkout
    assert db.pool.checkedout() == 1  # type: ignore[attr-defined]
    pipeline.stop_writer()
    assert db.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert applied(db) == 8


def test_ingest_groups_keeps_one_connection_for_all_its_groups(pipeline: Pipeline, db: Engine) -> None:
    seen = checkouts(db)
    raws = [m for k in range(6) for m in stay(k)]
    groups = pipeline.ingest_groups(raws, transport="test", size=4)
    assert [o.code for o in next(groups)] == ["AA"] * 4
    assert db.pool.checkedout() == 1  # type: ignore[attr-defined]
    assert [o.code for group in groups for o in group] == ["AA"] * 8
    assert len(seen) == 1
    assert db.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert applied(db) == 12


def test_a_failing_transaction_on_the_kept_connection_keeps_it_when_rolled_back(tmp_path: Path) -> None:
    """A transaction whose body raised and was rolled back leaves the connection as good as new: kept. One whose
    BEGIN failed (the write lock held by another process past the timeout) is given back, and the next
    transaction takes another."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'kept.db'}", data_dir=tmp_path, db_lock_timeout=0.05)
    holder, db = make_engine(settings), make_engine(settings)
    kept = KeptConnection(db)
    seen = checkouts(db)
    try:
        with kept.used():
            with pytest.raises(ValueError), transaction(db):
                raise ValueError("the body failed")
            with transaction(db) as conn:
                assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
            assert len(seen) == 1
            with transaction(holder), pytest.raises(StorageUnavailableError), transaction(db):
                pass  # pragma: no cover (BEGIN IMMEDIATE fails first)
            assert conn.closed
            with transaction(db) as again:
                assert again is not conn
                assert again.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert len(seen) == 2
        assert db.pool.checkedout() == 1  # type: ignore[attr-defined]
        kept.close()
        assert db.pool.checkedout() == 0  # type: ignore[attr-defined]
        with transaction(db) as alone:  # outside ``used``: the pool's, as before
            assert alone is not again
        assert len(seen) == 3
    finally:
        holder.dispose()
        db.dispose()


def _terminate_others(admin: Engine, database: str) -> int:
    """Terminate every backend of ``database`` but the admin's own: the writer's kept connection too."""
    with admin.connect() as conn:
        return len(
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).all()
        )


@pytest.mark.postgres
@pytest.mark.parametrize("idle", [0.0, 3600.0], ids=["pinged", "fails-then-alone"])
def test_a_kept_connection_killed_between_groups_is_replaced_and_the_next_group_applied(
    pg_database: str, mapping_engine: MappingEngine, monkeypatch: pytest.MonkeyPatch, idle: float
) -> None:
    """``pg_terminate_backend`` of the writer's connection between two groups. Idle past ``PING_IDLE_SECONDS``
    (``pinged``), the ping finds it dead and the group goes on a new one; not pinged, the group's first statement
    fails, the connection is given back (invalidated), and each message goes alone on a new one. Either way
    every message is applied once, and answered AA."""
    monkeypatch.setattr(engine_module, "PING_IDLE_SECONDS", idle)
    k = 100 if idle else 200  # the session's database is not emptied between these: stays of their own
    db = make_engine(Settings(database_url=pg_database))
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    p = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    disconnects: list[str] = []  # each disconnect met: by a ping, or by a statement
    event.listen(
        db,
        "handle_error",
        lambda context: (
            disconnects.append("ping" if context.is_pre_ping else "statement") if context.is_disconnect else None
        ),
    )
    try:
        before = applied(db)
        p.start_writer(1)
        assert submit_group(p, stay(k)) == ["AA", "AA"]
        with db.connect() as conn:
            pids = {conn.execute(text("SELECT pg_backend_pid()")).scalar_one()}
        assert _terminate_others(admin, make_url(pg_database).database or "") >= 2  # the pool's and the kept one
        time.sleep(0.05)
        assert submit_group(p, stay(k + 1)) == ["AA", "AA"]
        assert submit_group(p, stay(k + 2)) == ["AA", "AA"]
        assert applied(db) == before + 6
        # pinged: the kept connection's ping (then the pool's idle one, pinged by the test's own checkout)
        assert disconnects == (["statement"] if idle else ["ping", "ping"])
        with db.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() not in pids
    finally:
        p.stop_writer()
        assert db.pool.checkedout() == 0  # type: ignore[attr-defined]
        admin.dispose()
        db.dispose()
