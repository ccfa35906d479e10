"""Fuzz suite, stored part: mutated fixtures through the whole pipeline, over HTTP and over a real MLLP socket.

The pure steps see thousands of inputs in ``tests/unit/test_fuzz.py``; here a few hundred go all the way
(storage, folding, the ACK after commit) and through both transports: no escape, no 5xx, every MLLP
frame answered on the same connection, which stays open.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from gateway.db.schema import messages
from gateway.hl7.mllp import MLLPClient
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from gateway.runtime import Runtime
from tests.fuzzing import ack_problem, distinct_keys, load_seeds, mutate

SEEDS = load_seeds()


def _inputs(seed: int, count: int) -> list[tuple[int, bytes, list[str]]]:
    master, out = random.Random(seed), []
    for _ in range(count):
        own = master.getrandbits(32)
        rng = random.Random(own)
        base = distinct_keys(rng.choice(SEEDS), f"Z{own:x}") if rng.random() < 0.8 else rng.choice(SEEDS)
        raw, names = mutate(base, rng)
        out.append((own, raw, names))
    return out


def test_mutated_fixtures_through_the_whole_pipeline_are_answered_and_kept(
    db: Engine, mapping_engine: MappingEngine
) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db)
    kept = 0
    for own, raw, names in _inputs(7, 150):
        outcome = pipeline.ingest(raw, transport="fuzz")
        assert ack_problem(outcome.ack) is None, (own, names)
        assert "internal error" not in outcome.ack_text, (own, names)  # the catch-all is a net, not a path
        kept += outcome.message_id is not None
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar_one() == kept == 150


def test_mutated_fixtures_over_http_never_get_a_5xx(client: TestClient, database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the transport, not the store, is under test here")
    for own, raw, names in _inputs(8, 150):
        answer = client.post("/hl7v2", content=raw, headers={"Content-Type": "application/hl7-v2"})
        assert answer.status_code in (200, 400, 413), (own, names, answer.status_code)
        if answer.status_code == 200:
            assert ack_problem(answer.content) is None, (own, names)


def test_mutated_fixtures_over_mllp_each_get_one_ack_on_one_connection(runtime: Runtime, database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the transport, not the store, is under test here")

    async def scenario() -> int:
        await runtime.start(worker=False)
        assert runtime.mllp is not None
        answered = 0
        try:
            async with MLLPClient("127.0.0.1", runtime.mllp.port, timeout=30) as client:
                for own, raw, names in _inputs(9, 150):
                    payload = raw.replace(b"\x0b", b"").replace(b"\x1c", b"")  # one frame per input
                    ack = await client.send(payload)
                    assert ack_problem(ack) is None, (own, names)
                    answered += 1
                assert runtime.mllp.connections_total == 1  # never dropped, never reconnected
        finally:
            await runtime.stop()
        return answered

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=240)) == 150
