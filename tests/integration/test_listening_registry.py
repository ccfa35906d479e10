"""The subscriptions listening, kept in memory across transactions (``ListeningRegistry``): this process's
changes are matched at once, another instance's within ``LISTENING_MAX_AGE``, validity per message."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select

from gateway.db.repo import SubscriptionRecord, SubscriptionRepo
from gateway.db.schema import outbox, subscriptions
from gateway.db.unit import LISTENING_MAX_AGE, ListeningRegistry, listening_registry
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from gateway.subscriptions.topics import TOPIC_BASE
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
START = f"{TOPIC_BASE}/encounter-start"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(db: Engine) -> Iterator[Clock]:
    """The registry's monotonic clock, moved by hand (the test never waits)."""
    fake = Clock()
    registry = listening_registry(db)
    registry.clock, registry.max_age = fake, LISTENING_MAX_AGE
    yield fake
    registry.clock = ListeningRegistry().clock


@pytest.fixture
def pipeline(db: Engine, mapping_engine: MappingEngine) -> Pipeline:
    return Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)


def _record(sub_id: str, **changes: Any) -> SubscriptionRecord:
    values: dict[str, Any] = {
        "id": sub_id,
        "status": "active",
        "topic": START,
        "endpoint": "http://127.0.0.1:9/n",
        "channel_type": "rest-hook",
        "payload_content": "id-only",
        "headers": [],
        "filters": [],
        "secret": "s",
        "events_since_start": 0,
        "error": None,
        "created_at": NOW,
    }
    return SubscriptionRecord(**{**values, **changes})


def _row(sub_id: str) -> dict[str, Any]:
    """A subscription as another gateway instance writes it: straight to the table, unseen by this process."""
    return {
        "id": sub_id,
        "status": "active",
        "topic": START,
        "endpoint": "http://127.0.0.1:9/n",
        "channel_type": "rest-hook",
        "payload_content": "id-only",
        "headers": "[]",
        "filters": "[]",
        "secret": "s",
        "events_since_start": 0,
        "created_at": NOW,
        "owner": "",
    }


def _queued(db: Engine) -> list[str]:
    with db.connect() as conn:
        return sorted(str(r[0]) for r in conn.execute(select(outbox.c.subscription_id)))


def _admit(pipeline: Pipeline, n: int) -> None:
    message = Adt(control_id=f"R-{n}", ipp=f"40000{n}", visit=f"V-40{n}", movement=f"M-40{n}")
    outcome = pipeline.ingest(message.bytes(), transport="test")
    assert outcome.code == "AA", outcome.ack_text


def test_this_processs_subscription_is_matched_at_once(db: Engine, pipeline: Pipeline, clock: Clock) -> None:
    _admit(pipeline, 1)  # the registry has read: no subscription yet
    with db.begin() as conn:
        SubscriptionRepo(conn).add(_record("mine"))
    _admit(pipeline, 2)  # same instant on the registry's clock: read again all the same
    assert _queued(db) == ["mine"]
    with db.begin() as conn:
        SubscriptionRepo(conn).set_status("mine", "off")
    _admit(pipeline, 3)
    assert _queued(db) == ["mine"]


def test_another_instances_subscription_is_matched_within_the_delay(
    db: Engine, pipeline: Pipeline, clock: Clock
) -> None:
    _admit(pipeline, 1)
    with db.begin() as conn:
        conn.execute(insert(subscriptions).values(**_row("theirs")))
    clock.now += LISTENING_MAX_AGE / 2
    _admit(pipeline, 2)  # within the delay the registry is trusted: the read per message is what it saves
    assert _queued(db) == []
    clock.now += LISTENING_MAX_AGE
    _admit(pipeline, 3)
    assert _queued(db) == ["theirs"]


def test_a_subscription_another_instance_deleted_is_not_fatal(db: Engine, pipeline: Pipeline, clock: Clock) -> None:
    """The registry still holds it: its event counter has no row to increment, the message is applied
    again from a fresh read of the subscriptions, and nothing is queued for it."""
    with db.begin() as conn:
        conn.execute(insert(subscriptions).values(**_row("gone")))
    _admit(pipeline, 1)
    assert _queued(db) == ["gone"]
    with db.begin() as conn:
        conn.execute(delete(outbox))
        conn.execute(delete(subscriptions).where(subscriptions.c.id == "gone"))
    _admit(pipeline, 2)
    assert _queued(db) == []


def test_validity_is_applied_per_message(db: Engine, mapping_engine: MappingEngine, clock: Clock) -> None:
    """Start and end are compared with each message's time, not with the time the registry read them."""
    with db.begin() as conn:
        SubscriptionRepo(conn).add(_record("later", start_at=NOW + timedelta(hours=1)))
        SubscriptionRepo(conn).add(_record("over", end_at=NOW + timedelta(minutes=30)))
    early = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    _admit(early, 1)
    assert _queued(db) == ["over"]
    late = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW + timedelta(hours=2))
    _admit(late, 2)
    assert _queued(db) == ["later", "over"]


def test_a_subscription_rolled_back_is_not_kept(db: Engine, clock: Clock) -> None:
    """Read uncommitted in its own transaction (as a platform action's unit of work would), then rolled back:
    the registry reads again on the next message instead of keeping it until its read expires."""
    registry = listening_registry(db)
    with db.connect() as conn:
        trans = conn.begin()
        SubscriptionRepo(conn).add(_record("phantom"))
        assert [s.id for s in registry.listening(SubscriptionRepo(conn))[START]] == ["phantom"]
        trans.rollback()
    with db.connect() as conn:
        assert registry.listening(SubscriptionRepo(conn)) == {}
