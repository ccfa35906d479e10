"""The writer threads (:meth:`Pipeline.submit`): every message waiting is committed in one group and
answered only then; a failing one goes alone; writes are optimistic, so writers sharing doctors neither
lock nor deadlock each other, and a stale read is retried instead of overwriting a concurrent write."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from gateway import logs
from gateway.db import schema
from gateway.db.repo import ResourceRepo
from gateway.db.unit import unit_of_work
from gateway.errors import StorageConflictError
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Outcome, Pipeline, _Job, _Pending
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def statuses(db: Engine) -> Counter[str]:
    with db.connect() as conn:
        rows = conn.execute(select(schema.messages.c.status, func.count()).group_by(schema.messages.c.status))
        return Counter({str(status): int(n) for status, n in rows})


def stay(k: int) -> list[bytes]:
    """Admission then discharge of a stay; every stay names the same attending doctor."""
    ipp, visit = f"7{k:05d}", f"V-7{k:04d}"
    return [
        Adt(control_id=f"W-{k}-1", ipp=ipp, visit=visit, movement=f"M-{k}-1").bytes(),
        Adt(
            trigger="A03", control_id=f"W-{k}-2", ipp=ipp, visit=visit, movement=f"M-{k}-2", discharge_time="20260302"
        ).bytes(),
    ]


@pytest.fixture
def pipeline(db: Engine, mapping_engine: MappingEngine) -> Any:
    p = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    yield p
    p.stop_writer()


def test_messages_waiting_are_committed_as_one_group_and_all_answered(pipeline: Pipeline, db: Engine) -> None:
    groups: list[int] = []
    real = pipeline._write

    def counted(items: list[tuple[_Job, Any]]) -> None:
        groups.append(len(items))
        real(items)

    pipeline._write = counted  # type: ignore[method-assign]
    gate = threading.Event()
    held = hold_writer(pipeline, gate)
    futures = [pipeline.submit(stay(k)[0], transport="test") for k in range(5)]
    wait_until_read(pipeline, 5)
    gate.set()
    assert held.result(timeout=30).code == "AA"
    outcomes = [f.result(timeout=30) for f in futures]
    assert [o.code for o in outcomes] == ["AA"] * 5
    assert groups[-1] == 5  # the five waiting were taken together
    assert statuses(db) == {"applied": 6}  # and the one that held the writer


def hold_writer(pipeline: Pipeline, gate: threading.Event) -> Future[Outcome]:
    """Give the (one) writer a job whose group commit waits for ``gate``; return once it is busy with it,
    so that what is submitted next waits (read, in the queue). Returns that job's future."""
    busy = threading.Event()
    real = pipeline._commit_group

    def held(group: list[_Pending]) -> None:
        pipeline._commit_group = real  # type: ignore[method-assign]
        busy.set()
        gate.wait(10)
        real(group)

    pipeline._commit_group = held  # type: ignore[method-assign]
    pipeline.start_writer(1)
    future = pipeline.submit(Adt(control_id="W-block", ipp="799999", visit="V-79999").bytes(), transport="test")
    assert busy.wait(10)
    return future


def wait_until_read(pipeline: Pipeline, count: int) -> None:
    """Until the reader thread has handed ``count`` messages to the (held) writer."""
    deadline = time.monotonic() + 10
    while pipeline._ready.qsize() < count:
        assert time.monotonic() < deadline, "the reader thread did not read the messages submitted"
        time.sleep(0.005)


def test_a_failing_message_in_a_writer_group_is_stored_alone_and_the_others_get_aa(
    pipeline: Pipeline, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Pipeline._apply_in

    def fail_in_group(self: Pipeline, uow: Any, raw: bytes, *args: Any, **kwargs: Any) -> Outcome:
        if b"|W-2-1|" in raw and uow.conn.in_nested_transaction():
            raise RuntimeError("boom inside the group")  # alone, it succeeds
        return real(self, uow, raw, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "_apply_in", fail_in_group)
    gate = threading.Event()
    held = hold_writer(pipeline, gate)
    futures = [pipeline.submit(stay(k)[0], transport="test") for k in range(4)]
    gate.set()
    assert held.result(timeout=30).code == "AA"
    assert [f.result(timeout=30).code for f in futures] == ["AA"] * 4
    assert statuses(db) == {"applied": 5}  # four, and the blocking job's


def test_the_writer_answers_bad_input_and_keeps_it(pipeline: Pipeline, db: Engine) -> None:
    outcome = pipeline.submit(b"not an HL7 message", transport="test").result(timeout=30)
    assert outcome.code == "AR"
    assert statuses(db) == {"rejected": 1}


def test_a_crash_in_the_sender_binding_still_answers(pipeline: Pipeline, db: Engine) -> None:
    def broken() -> frozenset[str] | None:
        raise RuntimeError("registry unreadable")

    outcome = pipeline.submit(stay(1)[0], transport="test", facilities=broken).result(timeout=30)
    assert outcome.code == "AE" and b"ERR" in outcome.ack
    assert statuses(db) == {"error": 1}  # kept, replayable


def test_what_the_writer_logs_carries_the_submitters_correlation_ids(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    real = Pipeline._fold

    def spy(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        seen.append((threading.current_thread().name, logs.current()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "_fold", spy)
    with logs.bound(request_id="req-42", control_id="W-3-1"):
        assert pipeline.submit(stay(3)[0], transport="test").result(timeout=30).code == "AA"
    [(thread, context)] = seen
    assert thread.startswith("ingest-writer")
    assert context == {"request_id": "req-42", "control_id": "W-3-1"}


def test_stop_answers_what_was_submitted(pipeline: Pipeline, db: Engine) -> None:
    futures = [pipeline.submit(m, transport="test") for k in range(3) for m in stay(k)]
    pipeline.stop_writer()
    assert all(f.done() for f in futures)
    assert [f.result().code for f in futures] == ["AA"] * 6
    assert pipeline.submit(stay(9)[0], transport="test").result(timeout=30).code == "AA"  # starts again


def test_a_write_over_a_stale_read_is_a_conflict_not_an_overwrite(db: Engine, pipeline: Pipeline) -> None:
    assert pipeline.ingest(stay(5)[0], transport="test").code == "AA"
    with db.connect() as conn:
        patient_id = conn.execute(
            select(schema.resources.c.id).where(schema.resources.c.type == "Patient")
        ).scalar_one()
    with unit_of_work(db) as stale:
        current = stale.resources.get("Patient", patient_id)
        assert current is not None
        if db.dialect.name == "postgresql":
            # another gateway writes a new version meanwhile (SQLite: one writer at a time, nothing to race)
            with unit_of_work(db) as other:
                changed = {**current.content, "active": False}
                other.resources.write(changed, now=NOW, index=[])
            with pytest.raises(StorageConflictError):
                stale.resources.write({**current.content, "gender": "other"}, now=NOW, index=[])
        else:
            written, previous = stale.resources.write({**current.content, "gender": "other"}, now=NOW, index=[])
            assert previous is current and written.version_id == current.version_id + 1


@pytest.mark.parametrize("writers", [4])
def test_several_writers_sharing_doctors_apply_everything(
    db: Engine, mapping_engine: MappingEngine, writers: int
) -> None:
    """On PostgreSQL several writer threads commit groups concurrently; every stay names the same doctor.
    With row locks taken at read time they deadlocked (ARs after retries); optimistic writes do not."""
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    pipeline.start_writer(writers)
    results: list[str] = []

    def connection(first: int) -> None:
        for k in range(first, first + 5):
            for message in stay(k):
                results.append(pipeline.submit(message, transport="test").result(timeout=60).code)

    threads = [threading.Thread(target=connection, args=(10 * c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    pipeline.stop_writer()
    assert Counter(results) == {"AA": 80}
    assert statuses(db) == {"applied": 80}
    repo_check(db)


def repo_check(db: Engine) -> None:
    """Forty finished stays, one doctor, each resource's current version its last: its history is every
    version from the current one down to 1, and ``resource_versions`` holds those it replaced."""
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        _, total = repo.search("Encounter", [("status", None, "finished")], limit=200)
        assert total >= 40
        versions = conn.execute(
            select(schema.resources.c.type, schema.resources.c.id, schema.resources.c.version_id)
        ).all()
        for rtype, rid, version in versions:
            last = conn.execute(
                select(func.max(schema.resource_versions.c.version_id)).where(
                    schema.resource_versions.c.type == rtype, schema.resource_versions.c.id == rid
                )
            ).scalar_one()
            assert last == (version - 1 if version > 1 else None)
            assert [v.version_id for v in repo.history(rtype, rid)] == list(range(version, 0, -1))
