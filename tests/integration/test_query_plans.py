"""Search plans stay index lookups as the store grows (on SQLite, whose planner is deterministic here).

A search that scanned every resource of a type made ingest slow down with the store (25 msg/s after 2000
messages against 74 now): the refolds search stays and movements on every message.
"""

from __future__ import annotations

import re
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
        # an idNatPs (8 + RPPS) is also looked up under its RPPS form (0009): two lookups, each a probe
        [("identifier", None, "810003456789")],
        [("patient", None, "Patient/x"), ("identifier", "urn:oid:1.2.250.1.71.4.2.1", "810003456789")],
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
    # the index's primary key is the lookup (0006): the first criterion is a probe on its prefix
    assert "SEARCH search_index USING PRIMARY KEY (code=? AND value=?" in plan, plan
    assert "SCAN resources" not in plan and "SCAN search_index" not in plan, plan


def test_date_comparisons_sorts_and_index_rewrites_are_key_lookups(tmp_path: Any, mapping_engine: Engine) -> None:
    """Dates are compared, and sorted on, for resources already found: their rows are keyed by owner
    (type, param, empty value, id); a write deletes the entries it replaces by their whole key (the index
    has no owner index to scan)."""
    path = tmp_path / "dates.db"
    db = make_engine(Settings(database_url=f"sqlite:///{path}"))
    migrate(db)
    pipeline = Pipeline(engine=mapping_engine, db=db)
    for i in range(20):
        pipeline.ingest(
            Adt(control_id=f"D{i}", ipp=f"5{i:05d}", visit=f"Y-{i}", movement=f"P{i}").bytes(), transport="t"
        )
    statements: list[tuple[str, Any]] = []

    @event.listens_for(db, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.startswith(("SELECT resources", "DELETE FROM search_index")):
            statements.extend((statement, p) for p in (params if many else [params]))

    discharge = Adt(trigger="A03", control_id="D-D", ipp="500001", visit="Y-1", movement="P-D",
                    event_time="20260302100000", discharge_time="20260302100000")  # fmt: skip
    assert pipeline.ingest(discharge.bytes(), transport="t").code == "AA"
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        repo.search("CareTeam", [("status", None, "active")], limit=10, dates=[("date", "ge", "2026-01-01")])
        repo.search("Encounter", [("patient", None, "Patient/x")], limit=10, order=[("date", True)])
    db.dispose()
    assert any(s.startswith("DELETE") for s, _ in statements)  # the discharge rewrote entries
    with sqlite3.connect(path) as conn:
        for statement, params in statements:
            plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, params))
            assert "SCAN search_" not in plan and "SCAN resources" not in plan, plan
            if "system >=" in statement or "min(search_index" in statement:  # (aliased in a subquery)
                owner = r"SEARCH search_index\w* USING PRIMARY KEY \(code=\? AND value=\? AND id=\?"
                assert re.search(owner, plan), plan


@pytest.mark.postgres
def test_postgres_searches_probe_resources_by_id(pg_database: str, mapping_engine: Engine) -> None:
    """On PostgreSQL (statistics fresh: a store this small and never analysed is planned either way, as
    before 0009), a search driven by the index probes ``resources`` by
    (type, id) for each id found, never reads every resource of the type: with scans of a whole table
    priced out (a store this small is cheaper scanned), the plan's access to ``resources`` is its primary
    key on both columns. 0009's ids are bytes, turned into ``resources.id`` by an expression, which must
    be IMMUTABLE for the planner to probe with it (``schema.PG_FUNCTIONS``): with ``convert_from`` it
    scanned the type's resources and looked each up in the index."""
    db = make_engine(Settings(database_url=pg_database))
    pipeline = Pipeline(engine=mapping_engine, db=db)
    for i in range(30):
        pipeline.ingest(
            Adt(control_id=f"R{i}", ipp=f"4{i:05d}", visit=f"Z-{i}", movement=f"K{i}").bytes(), transport="t"
        )
    statements: list[tuple[str, Any]] = []

    @event.listens_for(db, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.startswith("SELECT resources"):
            statements.append((statement, params))

    with db.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("SET enable_bitmapscan = off")
        (patient,) = conn.exec_driver_sql("SELECT id FROM resources WHERE type = 'Patient' LIMIT 1").one()
        repo = ResourceRepo(conn)
        for criteria in (
            [("patient", None, f"Patient/{patient}")],
            [("identifier", None, "V-1")],
            [("identifier", None, "810003456789")],  # two lookups
        ):
            repo.search("Encounter", criteria, limit=10, count=False)
        plans = ["\n".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + s, p)) for s, p in statements]
    event.remove(db, "before_cursor_execute", capture)
    db.dispose()
    assert len(plans) == 3
    for plan in plans:
        scans = [line.strip() for line in plan.splitlines() if " on resources" in line]
        assert scans and all(line.startswith("->  Index Scan using pk_resources") for line in scans), plan
        conditions = plan.split(" on resources", 1)[1].split("\n")[1]
        assert "Index Cond:" in conditions and "(id)::text = " in conditions, plan


@pytest.mark.postgres
def test_postgres_prepared_statements_are_planned_for_each_run(pg_database: str, mapping_engine: Engine) -> None:
    """The hot path's statements are prepared on the server (psycopg, after 5 runs) and yet never run on a
    generic plan: one chosen on a fresh, never analysed database, for tables then empty, scanned a whole
    table on every stays lookup hundreds of messages later. ``plan_cache_mode=force_custom_plan`` on the
    gateway's connections keeps every run planned for its parameters and the tables' real size."""
    db = make_engine(Settings(database_url=pg_database))
    pipeline = Pipeline(engine=mapping_engine, db=db)
    for i in range(30):
        message = Adt(control_id=f"G{i}", ipp=f"6{i:05d}", visit=f"G-{i}", movement=f"G{i}")
        assert pipeline.ingest(message.bytes(), transport="t").code == "AA"
    with db.connect() as conn:
        assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one() == "force_custom_plan"
        prepared = conn.exec_driver_sql(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements WHERE NOT from_sql"
        ).all()
    db.dispose()
    lookups = [row for row in prepared if row.statement.lstrip().upper().startswith("SELECT")]
    assert lookups and all(row.custom_plans >= 5 for row in lookups), prepared  # prepared, and run often
    assert [row.statement[:60] for row in prepared if row.generic_plans] == []


#: Tables read on the hot path that may be scanned: the subscriptions listening are a handful of rows,
#: read once per transaction.
SCANNABLE = ("subscriptions",)


@pytest.mark.postgres
def test_postgres_ingest_reads_go_through_indexes(pg_database: str, mapping_engine: Engine) -> None:
    """Every SELECT of an admission and a discharge, explained on PostgreSQL with sequential scans priced
    out: a statement that no index can serve still shows a Seq Scan, and fails here. Plans are made per
    execution (prepared statements too: ``force_custom_plan``, see ``postgres_connect_args``), so they
    follow the tables' size without waiting for ANALYZE."""
    db = make_engine(Settings(database_url=pg_database))
    pipeline = Pipeline(engine=mapping_engine, db=db)
    for i in range(20):
        pipeline.ingest(
            Adt(control_id=f"P{i}", ipp=f"8{i:05d}", visit=f"W-{i}", movement=f"N{i}").bytes(), transport="t"
        )
    statements: list[tuple[str, Any]] = []

    @event.listens_for(db, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "pg_advisory" not in statement:
            statements.append((statement, params))

    admit = Adt(control_id="P-A", ipp="899999", visit="W-X", movement="N-A")
    discharge = Adt(trigger="A03", control_id="P-D", ipp="899999", visit="W-X", movement="N-D",
                    event_time="20260302100000", discharge_time="20260302100000")  # fmt: skip
    for message in (admit, discharge):
        assert pipeline.ingest(message.bytes(), transport="t").code == "AA"
    event.remove(db, "before_cursor_execute", capture)
    assert statements
    scans = []
    with db.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, params in statements:
            plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
            tables = [line.split(" on ")[1].split()[0] for line in plan.splitlines() if "Seq Scan on" in line]
            scans += [(table, statement.split("WHERE")[0][:60]) for table in tables if table not in SCANNABLE]
    db.dispose()
    assert scans == []


def test_sqlite_ingest_reads_go_through_indexes(tmp_path: Any, mapping_engine: Engine) -> None:
    """Every SELECT of an admission and a discharge on SQLite (the preloads of a message's streams and
    resources among them: ``IN`` lists that must stay index lookups) uses an index; only the handful of
    subscriptions may be scanned."""
    path = tmp_path / "ingest.db"
    db = make_engine(Settings(database_url=f"sqlite:///{path}"))
    migrate(db)
    pipeline = Pipeline(engine=mapping_engine, db=db)
    for i in range(20):
        pipeline.ingest(
            Adt(control_id=f"Q{i}", ipp=f"6{i:05d}", visit=f"X-{i}", movement=f"O{i}").bytes(), transport="t"
        )
    statements: list[tuple[str, Any]] = []

    @event.listens_for(db, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, params))

    admit = Adt(control_id="Q-A", ipp="699999", visit="X-X", movement="O-A")
    discharge = Adt(trigger="A03", control_id="Q-D", ipp="699999", visit="X-X", movement="O-D",
                    event_time="20260302100000", discharge_time="20260302100000")  # fmt: skip
    for message in (admit, discharge):
        assert pipeline.ingest(message.bytes(), transport="t").code == "AA"
    db.dispose()
    assert any("IN (" in s and "FROM facts" in s for s, _ in statements)  # the preloads ran
    scans = []
    with sqlite3.connect(path) as conn:
        for statement, params in statements:
            plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, params))
            scans += [(step, statement[:60]) for step in plan.split(" | ") if step.startswith("SCAN")]
    assert [s for s in scans if not s[0].startswith(tuple(f"SCAN {t}" for t in SCANNABLE))] == []
