"""Issue 12 on a real store: bad dates, long keys, internal failures and resends that differ only in framing.

Each test names the numbered item of the issue it guards. The rule they share: every input gets an
ACK with an ERR when it is not AA, the raw message is kept, and the next message is handled normally.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.db import engine as engine_module
from gateway.db.engine import make_engine, postgres_connect_args
from gateway.db.repo import MessageRepo
from gateway.hl7 import er7
from gateway.hl7.mllp import MLLPClient
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from gateway.runtime import Runtime
from gateway.subscriptions.topics import TOPIC_BASE
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def pipeline(db: Engine, mapping_engine: MappingEngine) -> Pipeline:
    return Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)


def msa(ack: bytes) -> tuple[str, str]:
    seg = er7.parse(ack).segment("MSA")
    assert seg is not None
    return seg.get(1), seg.get(2)


def errs(ack: bytes) -> list[tuple[str, str]]:
    """(ERR-3 code, ERR-2 location as ER7) of each ERR segment."""
    return [(seg.get(3), seg.raw(2)) for seg in er7.parse(ack).all("ERR")]


def stored(db: Engine, message_id: int | None) -> tuple[str, str, bytes]:
    assert message_id is not None
    with db.connect() as conn:
        record = MessageRepo(conn).get(message_id)
    assert record is not None
    return record.outcome, record.status, record.raw


@pytest.mark.parametrize(
    "event_time",
    ["20260301080000+2400", "20260301080000+9999", "20260301080000-9999", "00010101", "00010101000000-0100"],
)
def test_item1_bad_dates_are_not_instants_and_the_feed_goes_on(pipeline: Pipeline, db: Engine, event_time: str) -> None:
    raw = Adt(control_id="BAD-DATE", event_time=event_time, birth_date=event_time).bytes()
    outcome = pipeline.ingest(raw, transport="mllp")
    assert outcome.code in {"AA", "AE", "AR"}
    assert msa(outcome.ack)[1] == "BAD-DATE"
    assert stored(db, outcome.message_id)[2] == raw
    following = pipeline.ingest(Adt(control_id="NEXT", visit="V-2").bytes(), transport="mllp")
    assert following.code == "AA"


def test_item2_control_id_longer_than_stored_is_refused_precisely_and_kept(pipeline: Pipeline, db: Engine) -> None:
    raw = Adt(control_id="C" * 256).bytes()
    outcomes = [pipeline.ingest(raw, transport="mllp") for _ in range(3)]  # resends get the same answer
    for outcome in outcomes:
        assert outcome.code == "AR"
        assert errs(outcome.ack) == [("102", "MSH^1^10^1")]
        assert "256 characters" in outcome.ack_text
        assert "resend later" not in outcome.ack_text
        assert stored(db, outcome.message_id)[:2] == ("AR", "rejected")
    assert len({o.message_id for o in outcomes}) == 3
    accepted = pipeline.ingest(Adt(control_id="C" * 255).bytes(), transport="mllp")
    assert accepted.code == "AA"
    assert pipeline.ingest(Adt(control_id="C" * 255).bytes(), transport="mllp").status == "duplicate"


@pytest.mark.parametrize("field", ["sender", "facility"])
def test_item2_sender_keys_longer_than_stored_are_refused(pipeline: Pipeline, field: str) -> None:
    outcome = pipeline.ingest(Adt(**{field: "S" * 300}).bytes(), transport="http")
    assert outcome.code == "AR"
    assert errs(outcome.ack)[0][0] == "102"


def test_any_internal_failure_becomes_an_ae_with_err_and_the_message_is_kept(
    pipeline: Pipeline, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("mapping bug")

    monkeypatch.setattr(pipeline.engine, "map", boom)
    raw = Adt(control_id="BUG-1").bytes()
    outcome = pipeline.ingest(raw, transport="mllp")
    assert msa(outcome.ack) == ("AE", "BUG-1")
    assert errs(outcome.ack)[0][0] == "207"
    assert "RuntimeError" in outcome.ack_text
    assert stored(db, outcome.message_id) == ("AE", "error", raw)


def test_a_failure_outside_every_step_still_answers_and_keeps_the_message(
    pipeline: Pipeline, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise KeyError("not expected")

    monkeypatch.setattr("gateway.pipeline._check_header", boom)
    raw = Adt(control_id="BUG-2").bytes()
    outcome = pipeline.ingest(raw, transport="http")
    assert msa(outcome.ack) == ("AE", "BUG-2")
    assert stored(db, outcome.message_id)[2] == raw


@pytest.mark.parametrize(
    "variant",
    [
        lambda raw: raw.rstrip(b"\r"),  # python-hl7's mllp_send --loose strips the final terminator
        lambda raw: raw.replace(b"\r", b"\n"),
        lambda raw: raw.replace(b"\r", b"\r\n"),
        lambda raw: raw.rstrip(b"\r").replace(b"\r", b"\r\n"),
    ],
    ids=["no-final-cr", "lf", "crlf", "crlf-no-final"],
)
def test_item9_resend_with_other_segment_terminators_is_a_duplicate(pipeline: Pipeline, variant: object) -> None:
    raw = Adt(control_id="DUP-1").bytes()
    assert pipeline.ingest(raw, transport="mllp").code == "AA"
    assert callable(variant)
    again = pipeline.ingest(variant(raw), transport="mllp")
    assert again.code == "AA"
    assert again.status == "duplicate"


def test_item9_resend_with_other_content_is_still_refused(pipeline: Pipeline) -> None:
    assert pipeline.ingest(Adt(control_id="DUP-2").bytes(), transport="mllp").code == "AA"
    other = pipeline.ingest(Adt(control_id="DUP-2", given="BOB").bytes(), transport="mllp")
    assert other.code == "AE"
    assert errs(other.ack)[0][0] == "205"


# -- API edge: channel.header (item 6) --------------------------------------------------------------


def _subscription(headers: list[str]) -> dict[str, object]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": f"{TOPIC_BASE}/encounter-start",
        "channel": {
            "type": "rest-hook",
            "endpoint": "http://127.0.0.1:9/hook",
            "payload": "application/fhir+json",
            "header": headers,
        },
    }


@pytest.mark.parametrize("header", ["Transfer-Encoding: chunked", "Content-Length: 12", "Host: other", "Connection: x"])
def test_item6_forbidden_channel_header_is_refused_at_create_and_update(client: TestClient, header: str) -> None:
    name = header.split(":", 1)[0]
    created = client.post("/fhir/Subscription", json=_subscription([header]))
    assert created.status_code == 422
    assert name in created.json()["issue"][0]["diagnostics"]
    ok = client.post("/fhir/Subscription", json=_subscription(["Authorization: Bearer x"]))
    assert ok.status_code == 201
    sub_id = ok.json()["id"]
    updated = client.put(f"/fhir/Subscription/{sub_id}", json={**_subscription([header]), "id": sub_id})
    assert updated.status_code == 422
    assert name in updated.json()["issue"][0]["diagnostics"]


# -- health probes and database time limits (item 4) -----------------------------------------------


def test_item4_liveness_does_no_io(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_database(*_args: object) -> None:
        raise AssertionError("liveness touched the database")

    monkeypatch.setattr("gateway.api.health.ping", no_database)
    live = client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})


def test_item4_readiness_checks_database_migrations_and_worker(settings: Settings, database_url: str) -> None:
    runtime = Runtime.build(settings.model_copy(update={"run_worker": False}), run_migrations=False)
    try:
        with TestClient(create_app(runtime, start_services=False)) as c:
            ready = c.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ok", "database": "ok", "migrations": "current", "worker": "disabled"}
            assert c.get("/health").json() == {"status": "ok"}
            with runtime.db.begin() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
                conn.execute(text("DELETE FROM alembic_version"))
            try:
                pending = c.get("/health/ready")
            finally:  # the PostgreSQL test database is shared by the session: put its version back
                with runtime.db.begin() as conn:
                    for version in versions:
                        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": version})
            assert (pending.status_code, pending.json()["migrations"]) == (503, "pending")
            assert c.get("/health/ready").status_code == 200
    finally:
        runtime.close()


def test_item4_readiness_fails_when_the_worker_is_not_running(client: TestClient) -> None:
    ready = client.get("/health/ready")  # the client fixture does not start the worker
    assert (ready.status_code, ready.json()["worker"]) == (503, "stopped")


def test_item4_a_hung_database_makes_probes_answer_503_quickly_not_freeze(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def hung(*_args: object) -> None:
        release.wait(10)  # a database that does not answer: blocks a worker thread, not the event loop

    monkeypatch.setattr("gateway.api.health.ping", hung)
    runtime = Runtime.build(settings.model_copy(update={"health_timeout": 0.2}), run_migrations=False)
    try:
        with TestClient(create_app(runtime, start_services=False)) as c:
            started = time.monotonic()
            answers = [c.get("/health").status_code, c.get("/health/ready").status_code]
            assert c.get("/health/live").status_code == 200
            elapsed = time.monotonic() - started
            release.set()
        assert answers == [503, 503]
        assert elapsed < 5  # two probes of 0.2 s each while the database stays hung
    finally:
        release.set()
        runtime.close()


def test_item4_postgres_sessions_get_connect_statement_and_lock_timeouts() -> None:
    settings = Settings(db_connect_timeout=3, db_statement_timeout=1.5, db_lock_timeout=0.25)
    assert postgres_connect_args(settings) == {
        "connect_timeout": 3,
        "options": "-c statement_timeout=1500 -c lock_timeout=250 -c plan_cache_mode=force_custom_plan",
    }


def test_postgres_prepared_statements_can_be_turned_off_for_a_pooler() -> None:
    url = "postgresql+psycopg://u@db/gateway"
    assert "prepare_threshold" not in postgres_connect_args(Settings(database_url=url))
    off = postgres_connect_args(Settings(database_url=url, db_prepared_statements=False))
    assert off["prepare_threshold"] is None


@pytest.mark.postgres
@pytest.mark.parametrize("enabled", [True, False])
def test_postgres_prepared_statements_follow_the_setting(pg_database: str, enabled: bool) -> None:
    engine = make_engine(Settings(database_url=pg_database, db_prepared_statements=enabled))
    try:
        with engine.connect() as conn:
            for _ in range(8):  # past psycopg's threshold (5 runs)
                conn.exec_driver_sql("SELECT 1 WHERE 1 = %(one)s", {"one": 1})
            prepared = conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one()
        assert (prepared > 0) is enabled
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_item4_postgres_statement_timeout_is_in_force(pg_database: str) -> None:
    engine = make_engine(Settings(database_url=pg_database, db_statement_timeout=0.2))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "200ms"
            with pytest.raises(OperationalError):
                conn.execute(text("SELECT pg_sleep(2)"))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_killed_while_idle_is_replaced_on_checkout(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection whose server backend was terminated while it sat idle past
    ``PING_IDLE_SECONDS`` is pinged on checkout and replaced: the caller never sees the dead one."""
    monkeypatch.setattr(engine_module, "PING_IDLE_SECONDS", 0.05)
    engine = make_engine(Settings(database_url=pg_database))
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
        time.sleep(0.1)
        with engine.connect() as conn:
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert second != first
    finally:
        admin.dispose()
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_back_in_the_pool_a_moment_ago_is_not_pinged(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No round trip of its own for a connection that served a transaction less than
    ``PING_IDLE_SECONDS`` ago (``pool_pre_ping`` pinged on every checkout); one idle longer is pinged."""
    engine = make_engine(Settings(database_url=pg_database))
    pings: list[object] = []
    ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda dbapi_conn: pings.append(dbapi_conn) or ping(dbapi_conn))
    try:
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pings == []
        monkeypatch.setattr(engine_module, "PING_IDLE_SECONDS", 0.0)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert len(pings) == 1
    finally:
        engine.dispose()


# -- unbounded inputs at the API edge (item 5) -----------------------------------------------------


@pytest.fixture
def limited(settings: Settings) -> Iterator[TestClient]:
    small = {"max_fhir_body_bytes": 20_000, "max_json_depth": 32, "sandbox_max_bytes": 50_000}
    runtime = Runtime.build(settings.model_copy(update=small), run_migrations=False)
    try:
        with TestClient(create_app(runtime, start_services=False), raise_server_exceptions=False) as c:
            yield c
    finally:
        runtime.close()


def _streamed(data: bytes) -> Iterator[bytes]:
    """A body without Content-Length (chunked): the limit must hold while reading, not only when declared."""
    for i in range(0, len(data), 4096):
        yield data[i : i + 4096]


def test_item5_fhir_body_over_the_limit_is_refused_declared_or_streamed(limited: TestClient) -> None:
    big = orjson.dumps({**_subscription([]), "reason": "x" * 30_000})
    for kwargs in ({"content": big}, {"content": _streamed(big)}):
        answer = limited.post("/fhir/Subscription", headers={"Content-Type": "application/fhir+json"}, **kwargs)
        assert answer.status_code == 413
        assert answer.json()["issue"][0]["code"] == "too-long"


@pytest.mark.parametrize("depth", [33, 400, 1100])  # 1100: past orjson's own limit of 1024
def test_item5_deeply_nested_json_is_a_400_not_a_500(limited: TestClient, depth: int) -> None:
    leaf = '{"url":"http://example.org/x","valueString":"leaf"}'
    nested = '{"extension":[' * depth + leaf + "]}" * depth
    body = json.dumps(_subscription([]))[:-1] + ',"extension":[' + nested + "]}"  # written as text: too deep for json
    answer = limited.post("/fhir/Subscription", content=body, headers={"Content-Type": "application/fhir+json"})
    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_item5_sandbox_request_size_is_limited(limited: TestClient) -> None:
    answer = limited.post("/sandbox/convert", content=b"MSH|" + b"x" * 60_000, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 413


def test_item5_sandbox_cpu_budget_leaves_out_the_rest_and_says_so(settings: Settings) -> None:
    runtime = Runtime.build(settings.model_copy(update={"sandbox_cpu_seconds": 0.0}), run_migrations=False)
    try:
        with TestClient(create_app(runtime, start_services=False)) as c:
            body = b"\r\n\r\n".join(Adt(control_id=f"S-{i}").bytes() for i in range(3))
            answer = c.post("/sandbox/convert", content=body, headers={"Content-Type": "text/plain"}).json()
    finally:
        runtime.close()
    assert answer["skipped"] >= 1
    assert len(answer["messages"]) + answer["skipped"] == 3
    assert "CPU budget" in answer["skippedReason"]


def test_item1_over_mllp_a_bad_date_is_answered_and_the_next_message_too(runtime: Runtime) -> None:
    async def scenario() -> list[bytes]:
        await runtime.start(worker=False)
        assert runtime.mllp is not None
        try:
            async with MLLPClient("127.0.0.1", runtime.mllp.port, timeout=30) as client:
                bad = Adt(control_id="D-1", event_time="20260301080000+2400", birth_date="00010101").bytes()
                acks = [await client.send(bad), await client.send(Adt(control_id="D-2", visit="V-9").bytes())]
            assert runtime.mllp.connections_total == 1
        finally:
            await runtime.stop()
        return acks

    first, second = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert msa(first)[1] == "D-1"
    assert msa(second) == ("AA", "D-2")


def test_item1_over_http_a_bad_date_is_200_with_an_ack_and_kept(client: TestClient, db: Engine) -> None:
    """The HTTP side of item 1 (it answered 500): an ACK in a 200, the message kept, the feed going on."""
    headers = {"Content-Type": "application/hl7-v2"}
    bad = Adt(control_id="H-1", event_time="20260301080000+2400", birth_date="00010101").bytes()
    answer = client.post("/hl7v2", content=bad, headers=headers)
    assert answer.status_code == 200
    code, control = msa(answer.content)
    assert (code in {"AA", "AE", "AR"}, control) == (True, "H-1")
    assert answer.headers["X-Ack-Code"] == code
    with db.connect() as conn:
        kept = [m for m in MessageRepo(conn).list(limit=10) if m.control_id == "H-1"]
    assert len(kept) == 1 and stored(db, kept[0].id)[2] == bad
    following = client.post("/hl7v2", content=Adt(control_id="H-2", visit="V-2").bytes(), headers=headers)
    assert msa(following.content) == ("AA", "H-2")


def test_item4_a_hung_store_under_an_mllp_message_does_not_freeze_the_process(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one MLLP message waits on a store that does not answer, the event loop keeps turning: other
    connections are accepted and timers fire on time; the message is answered once the store is back."""
    release = threading.Event()
    ingest = runtime.pipeline.ingest

    def hung(raw: bytes, **kwargs: object) -> object:
        release.wait(5)  # blocks the worker thread running the pipeline, never the loop
        return ingest(raw, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime.pipeline, "ingest", hung)

    async def scenario() -> tuple[float, int, bytes]:
        await runtime.start(worker=False)
        assert runtime.mllp is not None
        try:
            async with MLLPClient("127.0.0.1", runtime.mllp.port, timeout=30) as stuck:
                loop = asyncio.get_running_loop()
                started = loop.time()
                pending = asyncio.create_task(stuck.send(Adt(control_id="HUNG-1").bytes()))
                await asyncio.sleep(0.3)  # meanwhile the message reaches the pipeline and waits on the store
                lag = loop.time() - started - 0.3
                async with MLLPClient("127.0.0.1", runtime.mllp.port, timeout=30):
                    await asyncio.sleep(0.05)
                    accepted = runtime.mllp.connections_total
                release.set()
                ack = await asyncio.wait_for(pending, timeout=20)
        finally:
            release.set()
            await runtime.stop()
        return lag, accepted, ack

    lag, accepted, ack = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert lag < 0.5
    assert accepted == 2
    assert msa(ack) == ("AA", "HUNG-1")
