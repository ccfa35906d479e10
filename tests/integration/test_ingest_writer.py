"""The writer threads (:meth:`Pipeline.submit`): every message waiting is committed in one group and
answered only then; a failing one goes alone; writes are optimistic, so writers sharing doctors neither
lock nor deadlock each other, and a stale read is retried instead of overwriting a concurrent write."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import Counter
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from gateway import logs
from gateway import pipeline as pipeline_module
from gateway.db import schema
from gateway.db.repo import ResourceRepo
from gateway.db.unit import unit_of_work
from gateway.errors import StorageConflictError
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Outcome, Pipeline, _Job
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

    def counted(jobs: list[_Job]) -> None:
        groups.append(len(jobs))
        real(jobs)

    pipeline._write = counted  # type: ignore[method-assign]
    gate = threading.Event()
    held = hold_writer(pipeline, gate)
    futures = [pipeline.submit(stay(k)[0], transport="test") for k in range(5)]
    gate.set()
    assert held.result(timeout=30).code == "AA"
    outcomes = [f.result(timeout=30) for f in futures]
    assert [o.code for o in outcomes] == ["AA"] * 5
    assert groups[-1] == 5  # the five waiting were taken together
    assert statuses(db) == {"applied": 6}  # and the one that held the writer


def hold_writer(pipeline: Pipeline, gate: threading.Event) -> Future[Outcome]:
    """Give the (one) writer a job whose sender-binding callable waits for ``gate``; return once it is busy
    with it, so that what is submitted next waits in the queue. Returns that job's future."""
    busy = threading.Event()

    def facilities() -> frozenset[str] | None:
        busy.set()
        gate.wait(10)
        return None

    pipeline.start_writer(1)
    job = _job(facilities)
    pipeline._jobs.put(job)
    assert busy.wait(10)
    return job.future


def _job(facilities: Any) -> _Job:
    return _Job(
        Adt(control_id="W-block", ipp="799999", visit="V-79999").bytes(),
        "test",
        NOW,
        facilities,
        Future(),
        contextvars.copy_context(),
    )


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
            with pytest.raises(StorageConflictError):  # at the unit's flush, which runs its UPDATEs together
                stale.resources.write({**current.content, "gender": "other"}, now=NOW, index=[])
                stale.flush()
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


def test_a_groups_waiters_on_one_event_loop_are_answered_in_one_call(pipeline: Pipeline, db: Engine) -> None:
    """:meth:`Pipeline.ingest_async`: the writer wakes the loop once per group, not once per message."""
    wakes: list[int] = []

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if callback is pipeline_module._resolve:
                wakes.append(len(args[0]))
            return real(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        gate = threading.Event()
        held = hold_writer(pipeline, gate)
        tasks = [asyncio.ensure_future(pipeline.ingest_async(stay(k)[0], transport="test")) for k in range(5)]
        await asyncio.sleep(0)  # each task has queued its job
        gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert (await asyncio.wrap_future(held)).code == "AA"
        return [o.code for o in outcomes]

    assert asyncio.run(run()) == ["AA"] * 5
    assert wakes == [5]
    assert statuses(db) == {"applied": 6}


def test_a_waiter_cancelled_while_its_message_is_applied_does_not_stop_the_writer(
    pipeline: Pipeline, db: Engine
) -> None:
    """An MLLP connection aborted at shutdown, an HTTP request cancelled: its message is still committed
    (and may have got its AA in the store), and the writer answers the messages after it."""

    async def run() -> str:
        gate = threading.Event()
        held = hold_writer(pipeline, gate)
        cancelled = asyncio.ensure_future(pipeline.ingest_async(stay(1)[0], transport="test"))
        await asyncio.sleep(0)
        cancelled.cancel()
        gate.set()
        assert (await asyncio.wait_for(asyncio.wrap_future(held), 30)).code == "AA"
        return (await asyncio.wait_for(pipeline.ingest_async(stay(2)[0], transport="test"), 30)).code

    assert asyncio.run(run()) == "AA"
    assert statuses(db) == {"applied": 3}


def test_a_future_cancelled_before_the_writer_answers_it_does_not_stop_the_writer(
    pipeline: Pipeline, db: Engine
) -> None:
    gate = threading.Event()
    held = hold_writer(pipeline, gate)
    cancelled = pipeline.submit(stay(1)[0], transport="test")
    assert cancelled.cancel()
    gate.set()
    assert held.result(timeout=30).code == "AA"
    assert pipeline.submit(stay(2)[0], transport="test").result(timeout=30).code == "AA"
    assert statuses(db) == {"applied": 3}
