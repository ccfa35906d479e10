"""The writer's transactions: ``BEGIN IMMEDIATE`` on the DB-API cursor, the connection a writer keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gateway.config import Settings
from gateway.db.engine import make_engine, transaction
from gateway.errors import StorageUnavailableError


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
