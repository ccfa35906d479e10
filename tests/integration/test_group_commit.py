"""Group commit: messages committed together, so that one failing message rolls back alone and the others
still get their AA only once the shared commit is done. A group is first applied without savepoints; when a
message fails, the transaction is rolled back whole and the group applied again with a SAVEPOINT per message
(and so are the groups of the next ``SAVEPOINT_SECONDS``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from gateway import pipeline as pipeline_module
from gateway.db import schema
from gateway.hl7 import er7
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import SAVEPOINT_SECONDS, Pipeline, _Pending
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def pending(engine: MappingEngine, adt: Adt) -> _Pending:
    message = er7.parse(adt.bytes())
    return _Pending(adt.bytes(), message, engine.map(message), "test", NOW)


def messages_by_status(db: Engine) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute(select(schema.messages.c.status, func.count()).group_by(schema.messages.c.status))
        return {str(status): int(n) for status, n in rows}


class Statements:
    """The SQL a store runs while listening (upper-cased first words)."""

    def __init__(self, db: Engine) -> None:
        self.seen: list[str] = []
        event.listen(db, "before_cursor_execute", self._heard)

    def _heard(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement.lstrip().split(None, 1)[0].upper())

    def count(self, word: str) -> int:
        return self.seen.count(word)


def failing_on_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages with MSH-10 ``BAD`` raise once applied, after their writes."""
    real = Pipeline._apply_in

    def fail_on_bad(self: Pipeline, uow: Any, raw: bytes, *args: Any, **kwargs: Any) -> Any:
        outcome = real(self, uow, raw, *args, **kwargs)
        if b"|BAD|" in raw:
            raise RuntimeError("boom after writing")  # its message row and state must roll back
        return outcome

    monkeypatch.setattr(Pipeline, "_apply_in", fail_on_bad)


def test_a_failing_message_rolls_back_alone(
    db: Engine, mapping_engine: MappingEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.pipeline")
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    failing_on_bad(monkeypatch)
    group = [
        pending(mapping_engine, Adt(control_id="G-1", ipp="410001", visit="V-41")),
        pending(mapping_engine, Adt(control_id="BAD", ipp="410002", visit="V-42")),
        pending(mapping_engine, Adt(control_id="G-3", ipp="410003", visit="V-43")),
    ]
    pipeline._commit_group(group)
    assert [p.outcome.code if p.outcome else None for p in group] == ["AA", None, "AA"]
    assert messages_by_status(db) == {"applied": 2}
    with db.connect() as conn:
        patients = conn.execute(select(schema.resources.c.id).where(schema.resources.c.type == "Patient")).all()
    assert len(patients) == 2  # nothing of the failed message stands
    with db.connect() as conn:
        stored = {int(i) for (i,) in conn.execute(select(schema.messages.c.id))}
    logged = [r.message_id for r in caplog.records if r.getMessage() == "message applied"]  # type: ignore[attr-defined]
    assert sorted(logged) == sorted(stored)  # once each, after the commit, under the ids that stand
    failed = pipeline._settle(group[1])  # taken again alone, it fails again: kept as an error, replayable
    assert (failed.code, failed.status) == ("AE", "error")
    assert messages_by_status(db) == {"applied": 2, "error": 1}


def test_a_resend_in_the_same_group_is_applied_once(db: Engine, mapping_engine: MappingEngine) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    adt = Adt(control_id="G-9", ipp="420001", visit="V-49")
    group = [pending(mapping_engine, adt), pending(mapping_engine, adt)]
    pipeline._commit_group(group)
    assert [(p.outcome.code, p.outcome.status) for p in group if p.outcome] == [
        ("AA", "applied"),
        ("AA", "duplicate"),
    ]
    assert messages_by_status(db) == {"applied": 1, "duplicate": 1}


def test_a_message_alone_takes_the_ordinary_path(db: Engine, mapping_engine: MappingEngine) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    outcome = pipeline.ingest(Adt(control_id="G-20", ipp="430001", visit="V-50").bytes(), transport="test")
    assert (outcome.code, outcome.status) == ("AA", "applied")
    assert messages_by_status(db) == {"applied": 1}


def test_a_group_with_no_failure_takes_no_savepoint(db: Engine, mapping_engine: MappingEngine) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    group = [pending(mapping_engine, Adt(control_id=f"S-{k}", ipp=f"44000{k}", visit=f"V-6{k}")) for k in range(3)]
    statements = Statements(db)
    pipeline._commit_group(group)
    assert [p.outcome.code if p.outcome else None for p in group] == ["AA", "AA", "AA"]
    assert statements.count("SAVEPOINT") == 0
    assert messages_by_status(db) == {"applied": 3}


def test_after_a_failure_groups_take_savepoints_for_a_while(
    db: Engine, mapping_engine: MappingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(pipeline_module.time, "monotonic", lambda: clock[0])
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    failing_on_bad(monkeypatch)
    statements = Statements(db)
    first = [
        pending(mapping_engine, Adt(control_id="F-1", ipp="450001", visit="V-71")),
        pending(mapping_engine, Adt(control_id="BAD", ipp="450002", visit="V-72")),
    ]
    pipeline._commit_group(first)
    assert [p.outcome.code if p.outcome else None for p in first] == ["AA", None]
    assert statements.count("SAVEPOINT") == 2  # the group again, a savepoint per message
    # BAD's savepoint, in the second try (the first try's rollback is the driver's call, not a statement;
    # that it happened shows in the statuses below: F-1 is applied once, not also as a duplicate)
    assert statements.count("ROLLBACK") == 1

    clock[0] += SAVEPOINT_SECONDS - 1
    statements.seen.clear()
    second = [pending(mapping_engine, Adt(control_id=f"W-{k}", ipp=f"45001{k}", visit=f"V-8{k}")) for k in range(2)]
    pipeline._commit_group(second)
    assert [p.outcome.code if p.outcome else None for p in second] == ["AA", "AA"]
    assert statements.count("SAVEPOINT") == 2  # still within the window: straight to savepoints

    clock[0] += 2
    statements.seen.clear()
    third = [pending(mapping_engine, Adt(control_id=f"H-{k}", ipp=f"45002{k}", visit=f"V-9{k}")) for k in range(2)]
    pipeline._commit_group(third)
    assert [p.outcome.code if p.outcome else None for p in third] == ["AA", "AA"]
    assert statements.count("SAVEPOINT") == 0  # the window is over
    assert messages_by_status(db) == {"applied": 5}
