"""Search plans stay index lookups as the store grows (on SQLite, whose planner is deterministic here).

A search that scanned every resource of a type made ingest slow down with the store (25 msg/s after 2000
messages against 74 now): the refolds search stays and movements on every message.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import event

from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.db.repo import ResourceRepo
from gateway.mapping.engine import Engine
from gateway.pipeline import Pipeline
from tests.messages import Adt


@pytest.mark.parametrize(
    "criteria",
    [
        [("part-of", None, "Encounter/x")],
        [("patient", None, "Patient/x"), ("status", None, "finished")],
        [("identifier", "urn:oid:1.2.250.1.999.9.2", "V-1")],
    ],
)
def test_searches_are_driven_by_the_lookup_index(
    tmp_path: Any, mapping_engine: Engine, criteria: list[tuple[str, str | None, str]]
) -> None:
    path = tmp_path / "plans.db"
    db = make_engine(Settings(database_url=f"sqlite:///{path}"))
    migrate(db)
    pipeline = Pipeline(engine=mapping_engine, db=db)
    for i in range(20):
        pipeline.ingest(
            Adt(control_id=f"C{i}", ipp=f"7{i:05d}", visit=f"V-{i}", movement=f"M{i}").bytes(), transport="t"
        )
    statements: list[tuple[str, Any]] = []

    @event.listens_for(db, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.startswith("SELECT resources"):
            statements.append((statement, params))

    with db.connect() as conn:
        ResourceRepo(conn).search("Encounter", criteria, limit=10, count=False)
    db.dispose()
    statement, params = statements[-1]
    plan = " | ".join(row[3] for row in sqlite3.connect(path).execute("EXPLAIN QUERY PLAN " + statement, params))
    assert "ix_search_lookup" in plan, plan
    assert "SCAN resources" not in plan and "SCAN search_index" not in plan, plan
