"""Group commit: messages committed together, each under its own SAVEPOINT, so that one failing message
rolls back alone and the others still get their AA only once the shared commit is done."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from gateway.db import schema
from gateway.hl7 import er7
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline, _Pending
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def pending(engine: MappingEngine, adt: Adt) -> _Pending:
    message = er7.parse(adt.bytes())
    return _Pending(adt.bytes(), message, engine.map(message), "test", NOW)


def messages_by_status(db: Engine) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute(select(schema.messages.c.status, func.count()).group_by(schema.messages.c.status))
        return {str(status): int(n) for status, n in rows}


def test_a_failing_message_rolls_back_alone(
    db: Engine, mapping_engine: MappingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    real = pipeline._apply_in.__func__  # type: ignore[attr-defined]

    def fail_on_bad(self: Pipeline, uow: Any, raw: bytes, *args: Any, **kwargs: Any) -> Any:
        outcome = real(self, uow, raw, *args, **kwargs)
        if b"|BAD|" in raw:
            raise RuntimeError("boom after writing")  # its message row and state must roll back
        return outcome

    monkeypatch.setattr(Pipeline, "_apply_in", fail_on_bad)
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
