"""DeliveryWorker.run_once against a real store (SQLite and PostgreSQL) and a mocked platform (respx).

The worker's clock is a :class:`Clock` the tests move by hand (``worker.now``), so backoff, horizons and
heartbeats are checked without sleeping; the retry base and cap are tiny, so one second later any
retry is due. Outbox rows come from real ingests of ADT messages through the pipeline.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.db.engine import make_engine, migrate, transaction
from gateway.db.repo import OutboxRecord, OutboxRepo, ResourceRepo, SubscriptionRecord, SubscriptionRepo
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from gateway.runtime import Runtime
from gateway.subscriptions import delivery as delivery_module
from gateway.subscriptions import worker as worker_module
from gateway.subscriptions.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, DeliveryResult, verify
from gateway.subscriptions.endpoints import vet_endpoint
from gateway.subscriptions.service import (
    SIGNING_SECRET,
    create_subscription,
    delete_subscription,
    resend,
    set_status,
    update_subscription,
)
from gateway.subscriptions.topics import TOPIC_BASE
from gateway.subscriptions.worker import HANDSHAKE_ATTEMPTS, RUN_AHEAD, DeliveryWorker
from tests.messages import IPP_SYSTEM, Adt

HOOK = "http://platform.test/hook"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
SECRET = "a-test-signing-secret-0123456789"
JSON = dict[str, Any]


class Clock:
    """The worker's and the pipeline's clock: starts a little ahead of real time, moves only by hand."""

    def __init__(self) -> None:
        self.t = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> datetime:
        self.t += timedelta(seconds=seconds)
        return self.t


def subscription(
    *,
    endpoint: str = HOOK,
    status: str = "requested",
    topic: str = "encounter-start",
    content: str = "id-only",
    criteria: str = f"Encounter?patient.identifier={IPP_SYSTEM}|100001",
    headers: tuple[str, ...] = ("Authorization: Bearer platform-token",),
    max_count: int | None = None,
    heartbeat: int | None = None,
    timeout: int | None = None,
    secret: str | None = SECRET,
) -> JSON:
    channel: JSON = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]},
        "header": list(headers),
    }
    extensions = []
    if max_count is not None:
        extensions.append({"url": f"{BACKPORT}/backport-max-count", "valuePositiveInt": max_count})
    if heartbeat is not None:
        extensions.append({"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat})
    if timeout is not None:
        extensions.append({"url": f"{BACKPORT}/backport-timeout", "valueUnsignedInt": timeout})
    if secret is not None:
        extensions.append({"url": SIGNING_SECRET, "valueString": secret})
    if extensions:
        channel["extension"] = extensions
    return {
        "resourceType": "Subscription",
        "status": status,
        "reason": "unit test",
        "criteria": f"{TOPIC_BASE}/{topic}",
        "_criteria": {"extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": criteria}]},
        "channel": channel,
    }


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"retry_base": 0.001, "retry_cap": 0.002, "retry_horizon": 3600.0, "delivery_timeout": 3.0}
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pipeline(db: Engine, mapping_engine: MappingEngine, clock: Clock) -> Pipeline:
    return Pipeline(engine=mapping_engine, db=db, clock=clock)


@pytest.fixture
def platform() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


class Harness:
    """A worker on the test store, its clock, the pipeline feeding it, and helpers to look inside."""

    def __init__(self, db: Engine, settings: Settings, clock: Clock, pipeline: Pipeline) -> None:
        self.db, self.settings, self.clock, self.pipeline = db, settings, clock, pipeline
        self.worker = DeliveryWorker(db=db, settings=settings, client=httpx.AsyncClient(), rng=random.Random(7))
        self.worker.now = clock
        self.messages = 0

    def close(self) -> None:
        asyncio.run(self.worker.client.aclose())

    def run_once(self) -> int:
        return asyncio.run(self.worker.run_once())

    def subscribe(self, body: JSON | None = None, **kwargs: Any) -> str:
        with transaction(self.db) as conn:
            stored, _ = create_subscription(
                conn, body or subscription(**kwargs), allowlist=self.settings.endpoint_allowlist, now=self.clock()
            )
        return stored.id

    def admit(self, *, ipp: str = "100001", patient_class: str = "I") -> None:
        """One admission of a new stay: fires encounter-start once."""
        self.messages += 1
        n = self.messages
        outcome = self.pipeline.ingest(
            Adt(control_id=f"M-{n}", visit=f"V-{n}", movement=f"MVT-{n}", ipp=ipp, patient_class=patient_class).bytes(),
            transport="test",
        )
        assert outcome.code == "AA", outcome.ack_text()

    def sub(self, sub_id: str) -> SubscriptionRecord:
        with self.db.connect() as conn:
            record = SubscriptionRepo(conn).get(sub_id)
        assert record is not None
        return record

    def rows(self, sub_id: str, *, kind: str | None = None) -> list[OutboxRecord]:
        with self.db.connect() as conn:
            rows = OutboxRepo(conn).for_subscription(sub_id)
        return [r for r in rows if kind is None or r.notification_type == kind]

    def resource(self, sub_id: str) -> JSON:
        with self.db.connect() as conn:
            stored = ResourceRepo(conn).get("Subscription", sub_id)
        assert stored is not None
        return stored.content

    def activate(self, sub_id: str) -> None:
        """Run the handshake through (the platform must answer 2xx to it)."""
        assert self.sub(sub_id).status == "requested"
        assert self.run_once() == 1
        assert self.sub(sub_id).status == "active"


@pytest.fixture
def harness(db: Engine, fast: Settings, clock: Clock, pipeline: Pipeline) -> Iterator[Harness]:
    h = Harness(db, fast, clock, pipeline)
    yield h
    h.close()


# -- reading what the platform received ------------------------------------------------------------


def bundle_of(request: httpx.Request) -> JSON:
    body: JSON = json.loads(request.content)
    return body


def status_of(bundle: JSON) -> dict[str, JSON]:
    params = bundle["entry"][0]["resource"]["parameter"]
    return {p["name"]: p for p in params if p["name"] != "notification-event"}


def kind(request: httpx.Request) -> str:
    return str(status_of(bundle_of(request))["type"]["valueCode"])


def numbers(request: httpx.Request) -> list[int]:
    params = bundle_of(request)["entry"][0]["resource"]["parameter"]
    return [
        int(part["valueString"])
        for p in params
        if p["name"] == "notification-event"
        for part in p["part"]
        if part["name"] == "event-number"
    ]


def sent(route: respx.Route) -> list[tuple[str, list[int]]]:
    """(notification type, event numbers) of each request, in order."""
    return [(kind(call.request), numbers(call.request)) for call in route.calls]


def answers(*statuses: int) -> Callable[[httpx.Request], httpx.Response]:
    """A side effect answering ``statuses`` in turn, then 200 for ever."""
    queue = list(statuses)

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(queue.pop(0) if queue else 200)

    return respond


# -- handshake -------------------------------------------------------------------------------------


def test_handshake_success_makes_the_subscription_active(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe()
    assert harness.sub(sub_id).status == "requested"

    assert harness.run_once() == 1

    assert sent(route) == [("handshake", [])]
    bundle = bundle_of(route.calls[0].request)
    assert bundle["type"] == "history"
    assert status_of(bundle)["status"]["valueCode"] == "requested"
    assert status_of(bundle)["subscription"]["valueReference"]["reference"].endswith(f"Subscription/{sub_id}")
    assert harness.sub(sub_id).status == "active"
    assert harness.resource(sub_id)["status"] == "active"
    assert [r.status for r in harness.rows(sub_id)] == ["delivered"]
    assert harness.run_once() == 0  # nothing else to send
    assert route.call_count == 1


def test_handshake_failing_three_times_puts_the_subscription_in_error(
    harness: Harness, platform: respx.MockRouter
) -> None:
    route = platform.post(HOOK).respond(500)
    sub_id = harness.subscribe()

    for attempt in range(1, HANDSHAKE_ATTEMPTS):
        assert harness.run_once() == 1
        assert harness.sub(sub_id).status == "requested"
        (row,) = harness.rows(sub_id)
        assert row.attempts == attempt and row.last_error == "HTTP 500"
        harness.clock.advance(1)
    assert harness.run_once() == 1

    record = harness.sub(sub_id)
    assert record.status == "error"
    assert record.error is not None and "handshake" in record.error and "HTTP 500" in record.error
    resource = harness.resource(sub_id)
    assert resource["status"] == "error" and "HTTP 500" in resource["error"]
    assert route.call_count == HANDSHAKE_ATTEMPTS
    harness.clock.advance(60)
    assert harness.run_once() == 0  # a subscription in error is not tried again on its own
    assert route.call_count == HANDSHAKE_ATTEMPTS


def test_events_of_a_requested_subscription_wait_behind_the_handshake(
    harness: Harness, platform: respx.MockRouter
) -> None:
    route = platform.post(HOOK).mock(side_effect=answers(503))
    sub_id = harness.subscribe()
    harness.admit()  # event #1 is due now, but the subscription is not active yet

    assert harness.run_once() == 1
    assert sent(route) == [("handshake", [])]
    (event,) = harness.rows(sub_id, kind="event-notification")
    assert event.status == "pending" and event.attempts == 0
    assert harness.run_once() == 0  # the handshake waits for its retry; the event does not jump ahead

    harness.clock.advance(1)
    assert harness.run_once() == 1  # the handshake again, accepted this time
    assert sent(route)[-1] == ("handshake", [])
    assert harness.sub(sub_id).status == "active"
    assert harness.run_once() == 1
    assert sent(route) == [("handshake", []), ("handshake", []), ("event-notification", [1])]


# -- order and retries -----------------------------------------------------------------------------


def test_a_failing_head_holds_back_the_events_behind_it(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe()
    harness.activate(sub_id)
    harness.admit()
    harness.admit()
    route.mock(side_effect=answers(503, 503))

    assert harness.run_once() == 1  # #1 fails
    assert harness.run_once() == 0  # #2 may not overtake #1 while #1 waits
    harness.clock.advance(1)
    assert harness.run_once() == 1  # #1 fails again
    harness.clock.advance(1)
    assert harness.run_once() == 1  # #1 goes through
    assert harness.run_once() == 1  # then #2

    events = [n for k, n in sent(route) if k == "event-notification"]
    assert events == [[1], [1], [1], [2]]
    assert [(r.event_number, r.status, r.attempts) for r in harness.rows(sub_id, kind="event-notification")] == [
        (1, "delivered", 3),
        (2, "delivered", 1),
    ]


def test_retries_back_off_and_count_attempts(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe()
    harness.activate(sub_id)
    harness.worker.policy = type(harness.worker.policy)(base=10.0, cap=300.0, horizon=3600.0)
    harness.admit()
    route.mock(side_effect=answers(503, 502, 500))
    first_failure = harness.clock()

    for attempt in (1, 2, 3):
        now = harness.clock()
        assert harness.run_once() == 1
        (row,) = harness.rows(sub_id, kind="event-notification")
        assert row.status == "pending"
        assert row.attempts == attempt
        assert row.retry_since == first_failure  # the horizon counts from the first failure
        ceiling = timedelta(seconds=harness.worker.policy.ceiling(attempt))
        assert now < row.next_attempt_at <= now + ceiling
        assert harness.run_once() == 0  # not due before its time
        harness.clock.t = row.next_attempt_at

    assert harness.run_once() == 1
    (row,) = harness.rows(sub_id, kind="event-notification")
    assert row.status == "delivered" and row.attempts == 4 and row.last_error is None
    assert [k for k, _ in sent(route)] == ["handshake"] + ["event-notification"] * 4
    assert harness.sub(sub_id).status == "active"


def test_past_the_horizon_the_subscription_errs_and_its_events_stay_readable(
    db: Engine, fast: Settings, clock: Clock, pipeline: Pipeline, platform: respx.MockRouter
) -> None:
    settings = fast.model_copy(update={"retry_horizon": 60.0})
    harness = Harness(db, settings, clock, pipeline)
    try:
        route = platform.post(HOOK).respond(200)
        sub_id = harness.subscribe()
        harness.activate(sub_id)
        harness.admit()
        harness.admit()
        route.respond(503)

        assert harness.run_once() == 1
        harness.clock.advance(30)
        assert harness.run_once() == 1  # still within the horizon: retried
        assert harness.sub(sub_id).status == "active"
        harness.clock.advance(31)
        assert harness.run_once() == 1  # 61 s after the first failure: give up

        record = harness.sub(sub_id)
        assert record.status == "error"
        assert record.error is not None and "event-notification" in record.error and "HTTP 503" in record.error
        rows = harness.rows(sub_id, kind="event-notification")
        assert [(r.event_number, r.status) for r in rows] == [(1, "pending"), (2, "pending")]
        harness.clock.advance(3600)
        assert harness.run_once() == 0
        harness.admit()  # a subscription in error keeps recording what happens
        assert [r.event_number for r in harness.rows(sub_id, kind="event-notification")] == [1, 2, 3]

        runtime = Runtime.build(settings)
        try:
            with TestClient(create_app(runtime, start_services=False)) as client:
                answer = client.get(f"/fhir/Subscription/{sub_id}/$events")
                assert answer.status_code == 200
                params = answer.json()["entry"][0]["resource"]["parameter"]
                got = [
                    int(part["valueString"])
                    for p in params
                    if p["name"] == "notification-event"
                    for part in p["part"]
                    if part["name"] == "event-number"
                ]
                assert got == [1, 2, 3]
                status = {p["name"]: p for p in params}
                assert status["status"]["valueCode"] == "error"
                assert status["type"]["valueCode"] == "query-event"
        finally:
            runtime.close()
    finally:
        harness.close()


@pytest.mark.parametrize("how", ["resend", "put-requested", "put-active"])
def test_reactivation_sends_a_new_handshake_then_the_missed_events_in_order(
    harness: Harness, platform: respx.MockRouter, how: str
) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe()
    harness.activate(sub_id)
    harness.admit()
    harness.admit()
    route.respond(410)  # the platform's endpoint is gone: not worth retrying
    assert harness.run_once() == 1
    assert harness.sub(sub_id).status == "error"
    harness.admit()
    route.respond(200)
    harness.clock.advance(5)

    with transaction(harness.db) as conn:
        if how == "resend":
            assert resend(conn, sub_id, now=harness.clock()) == 3
        else:
            body = {**subscription(status="requested" if how == "put-requested" else "active"), "id": sub_id}
            update_subscription(conn, sub_id, body, allowlist=harness.settings.endpoint_allowlist, now=harness.clock())
    assert harness.sub(sub_id).status == "requested"
    assert harness.sub(sub_id).error is None
    assert harness.resource(sub_id)["status"] == "requested"

    assert harness.run_once() == 1
    assert sent(route)[-1] == ("handshake", [])
    assert harness.sub(sub_id).status == "active"
    while harness.run_once():
        pass
    assert sent(route)[1:] == [
        ("event-notification", [1]),  # refused with 410
        ("handshake", []),
        ("event-notification", [1]),
        ("event-notification", [2]),
        ("event-notification", [3]),
    ]
    assert {r.status for r in harness.rows(sub_id)} == {"delivered"}


def test_max_count_batches_events_into_one_notification(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe(max_count=3)
    harness.activate(sub_id)
    for _ in range(4):
        harness.admit()

    assert harness.run_once() == 1
    assert sent(route)[-1] == ("event-notification", [1, 2, 3])
    request = route.calls[-1].request
    assert request.headers[IDEMPOTENCY_HEADER] == f"{sub_id}:3"
    bundle = bundle_of(request)
    assert status_of(bundle)["events-since-subscription-start"]["valueString"] == "3"
    assert len({e["fullUrl"] for e in bundle["entry"][1:]}) >= 3  # one focus Encounter per stay
    assert harness.run_once() == 1
    assert sent(route)[-1] == ("event-notification", [4])
    assert route.call_count == 3


def test_max_count_batch_fails_and_is_retried_as_a_whole(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe(max_count=3)
    harness.activate(sub_id)
    harness.admit()
    harness.admit()
    route.mock(side_effect=answers(503))

    assert harness.run_once() == 1
    rows = harness.rows(sub_id, kind="event-notification")
    assert [(r.status, r.attempts) for r in rows] == [("pending", 1), ("pending", 1)]
    harness.admit()
    harness.clock.advance(1)
    assert harness.run_once() == 1
    assert [n for k, n in sent(route) if k == "event-notification"] == [[1, 2], [1, 2, 3]]


@pytest.mark.parametrize(("status", "retried"), [(400, False), (404, False), (410, False), (408, True), (429, True)])
def test_a_client_error_stops_at_once_unless_it_is_worth_retrying(
    harness: Harness, platform: respx.MockRouter, status: int, retried: bool
) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe()
    harness.activate(sub_id)
    harness.admit()
    route.respond(status)

    assert harness.run_once() == 1
    record = harness.sub(sub_id)
    (row,) = harness.rows(sub_id, kind="event-notification")
    assert row.status == "pending" and row.attempts == 1 and row.last_error == f"HTTP {status}"
    if retried:
        assert record.status == "active"
        harness.clock.advance(1)
        assert harness.run_once() == 1
    else:
        assert record.status == "error"
        assert record.error is not None and f"HTTP {status}" in record.error
        harness.clock.advance(1)
        assert harness.run_once() == 0


def test_a_handshake_refused_with_a_client_error_does_not_wait_for_three_attempts(
    harness: Harness, platform: respx.MockRouter
) -> None:
    route = platform.post(HOOK).respond(401)
    sub_id = harness.subscribe()
    assert harness.run_once() == 1
    assert harness.sub(sub_id).status == "error"
    assert route.call_count == 1


# -- heartbeats ------------------------------------------------------------------------------------


def test_an_idle_subscription_gets_heartbeats(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe(heartbeat=60)
    quiet = harness.subscribe(criteria=f"Encounter?patient.identifier={IPP_SYSTEM}|999")  # no heartbeat period
    assert harness.run_once() == 2  # both handshakes

    harness.clock.advance(30)
    harness.worker._queue_heartbeats()
    assert harness.run_once() == 0  # not yet: last heard 30 s ago

    harness.clock.advance(31)
    harness.worker._queue_heartbeats()
    assert harness.run_once() == 1
    assert sent(route)[-1] == ("heartbeat", [])
    beat = route.calls[-1].request
    bundle = bundle_of(beat)
    assert len(bundle["entry"]) == 1  # the status only
    assert status_of(bundle)["subscription"]["valueReference"]["reference"].endswith(sub_id)
    assert status_of(bundle)["status"]["valueCode"] == "active"
    assert verify(beat.content, SECRET, beat.headers[SIGNATURE_HEADER])

    harness.clock.advance(61)
    harness.worker._queue_heartbeats()
    assert harness.run_once() == 1
    assert sent(route)[-1] == ("heartbeat", [])
    keys = [c.request.headers[IDEMPOTENCY_HEADER] for c in route.calls if kind(c.request) == "heartbeat"]
    assert len(set(keys)) == 2, "two heartbeats must not share an Idempotency-Key"
    assert all(k.startswith(f"{sub_id}:") and k != f"{sub_id}:0" for k in keys)
    assert harness.rows(quiet, kind="heartbeat") == []


def test_no_heartbeat_while_an_event_is_pending(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe(heartbeat=10)
    harness.activate(sub_id)
    harness.admit()
    route.respond(503)
    assert harness.run_once() == 1  # the event fails and waits for its retry
    harness.clock.advance(11)
    harness.worker._queue_heartbeats()
    assert harness.rows(sub_id, kind="heartbeat") == []


# -- the request itself ----------------------------------------------------------------------------


def test_per_subscription_timeout_is_used(harness: Harness, platform: respx.MockRouter) -> None:
    seen: list[tuple[str, float]] = []

    def timeout(request: httpx.Request) -> httpx.Response:
        sub = status_of(bundle_of(request))["subscription"]["valueReference"]["reference"].rsplit("/", 1)[-1]
        seen.append((sub, request.extensions["timeout"]["read"]))
        raise httpx.ReadTimeout("platform too slow", request=request)

    platform.post(HOOK).mock(side_effect=timeout)
    own = harness.subscribe(timeout=7)
    default = harness.subscribe(criteria=f"Encounter?patient.identifier={IPP_SYSTEM}|2")

    assert harness.run_once() == 2
    assert dict(seen) == {own: 7.0, default: harness.settings.delivery_timeout}
    for sub_id in (own, default):
        (row,) = harness.rows(sub_id)
        assert row.attempts == 1 and row.last_error == "ReadTimeout"  # a timeout is retried
        assert harness.sub(sub_id).status == "requested"


def test_channel_headers_idempotency_key_and_signature(harness: Harness, platform: respx.MockRouter) -> None:
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe(
        headers=("Authorization: Bearer platform-token", "X-Platform-Tenant: dac-42", "Idempotency-Key: forged")
    )
    harness.activate(sub_id)
    harness.admit()
    harness.admit()
    route.mock(side_effect=answers(503))
    assert harness.run_once() == 1  # #1 fails
    harness.clock.advance(1)
    while harness.run_once():
        pass

    requests = [c.request for c in route.calls]
    handshake, events = requests[0], requests[1:]
    assert [numbers(r) for r in events] == [[1], [1], [2]]
    assert [r.headers[IDEMPOTENCY_HEADER] for r in events] == [f"{sub_id}:1", f"{sub_id}:1", f"{sub_id}:2"]
    assert handshake.headers[IDEMPOTENCY_HEADER].startswith(f"{sub_id}:handshake:")
    for request in requests:
        assert request.headers["Authorization"] == "Bearer platform-token"
        assert request.headers["X-Platform-Tenant"] == "dac-42"
        assert request.headers["Content-Type"] == "application/fhir+json"
        signature = request.headers[SIGNATURE_HEADER]
        assert verify(request.content, SECRET, signature)
        assert not verify(request.content + b" ", SECRET, signature)
        assert not verify(request.content, "another-secret-0123456789", signature)


def test_an_endpoint_resolving_to_a_private_address_at_send_time_is_refused(
    db: Engine, fast: Settings, clock: Clock, pipeline: Pipeline, platform: respx.MockRouter, monkeypatch: Any
) -> None:
    settings = fast.model_copy(update={"endpoint_allowlist": []})
    endpoint = "https://platform.example/hook"
    resolved = {"address": "93.184.216.34"}  # public when the subscription is created

    def resolver(host: str, port: int | None) -> list[tuple[Any, ...]]:
        return [(2, 1, 6, "", (resolved["address"], port or 443))]

    monkeypatch.setattr(delivery_module, "vet_endpoint", partial(vet_endpoint, resolver=resolver))
    route = platform.post(endpoint).respond(200)
    harness = Harness(db, settings, clock, pipeline)
    try:
        with transaction(db) as conn:
            stored, _ = create_subscription(
                conn, subscription(endpoint=endpoint), allowlist=[], now=clock(), resolver=resolver
            )
        sub_id = stored.id
        harness.activate(sub_id)  # resolves to a public address: the handshake goes out
        assert route.call_count == 1

        resolved["address"] = "10.1.2.3"  # DNS now points inside the hospital network
        harness.admit()
        assert harness.run_once() == 1
        assert route.call_count == 1  # nothing left the gateway
        record = harness.sub(sub_id)
        assert record.status == "error"  # refused at once: retrying would not make the address public
        assert record.error is not None and "refused" in record.error and "private" in record.error
        (row,) = harness.rows(sub_id, kind="event-notification")
        assert row.status == "pending"  # kept for $events and for a resend once DNS is fixed
    finally:
        harness.close()


def test_a_delivery_in_flight_does_not_resurrect_a_deleted_subscription(
    harness: Harness, platform: respx.MockRouter
) -> None:
    sub_id = harness.subscribe()

    def delete_meanwhile(request: httpx.Request) -> httpx.Response:
        with transaction(harness.db) as conn:
            delete_subscription(conn, sub_id, now=harness.clock())
        return httpx.Response(200)

    platform.post(HOOK).mock(side_effect=delete_meanwhile)
    assert harness.run_once() == 1  # the handshake succeeds after the subscription was deleted
    with harness.db.connect() as conn:
        assert SubscriptionRepo(conn).get(sub_id) is None
        stored = ResourceRepo(conn).get("Subscription", sub_id)
    assert stored is not None and stored.deleted


def test_a_wake_during_an_empty_pass_is_not_lost(db: Engine, fast: Settings) -> None:
    """An ingest that commits while a pass finds nothing must cut the idle wait short (poll is 60 s here)."""
    worker = DeliveryWorker(db=db, settings=fast.model_copy(update={"worker_poll_interval": 60.0}))
    passes = 0

    async def main() -> None:
        second = asyncio.Event()

        async def empty_pass() -> int:
            nonlocal passes
            passes += 1
            if passes == 1:
                worker.wake()  # the pipeline's on_commit, from its thread
                await asyncio.sleep(0)  # the wake lands before this pass reports "nothing due"
            else:
                second.set()
                worker.stop()
            return 0

        worker.dispatch = empty_pass  # type: ignore[method-assign]
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(second.wait(), timeout=10)
        finally:
            worker.stop()
            await task
            await worker.client.aclose()

    asyncio.run(main())
    assert passes == 2


def test_a_put_during_an_inflight_handshake_wins(harness: Harness, platform: respx.MockRouter) -> None:
    """Handshake answered 2xx by the old endpoint after a PUT moved the subscription: not proof for the new one."""
    sub_id = harness.subscribe()
    moved = "http://platform.test/new-hook"

    def move_meanwhile(request: httpx.Request) -> httpx.Response:
        with transaction(harness.db) as conn:
            body = {**subscription(endpoint=moved), "id": sub_id}
            update_subscription(conn, sub_id, body, allowlist=harness.settings.endpoint_allowlist, now=harness.clock())
        return httpx.Response(200)

    old = platform.post(HOOK).mock(side_effect=move_meanwhile)
    new = platform.post(moved).respond(200)
    assert harness.run_once() == 1
    assert old.call_count == 1
    assert harness.sub(sub_id).status == "requested"  # the new endpoint has not answered yet
    assert harness.run_once() == 1
    assert sent(new) == [("handshake", [])]
    assert harness.sub(sub_id).status == "active"
    assert {r.status for r in harness.rows(sub_id, kind="handshake")} == {"delivered"}


@pytest.mark.parametrize("answer", [200, 400])
def test_status_off_during_an_inflight_delivery_stays_off(
    harness: Harness, platform: respx.MockRouter, answer: int
) -> None:
    sub_id = harness.subscribe()

    def pause_meanwhile(request: httpx.Request) -> httpx.Response:
        with transaction(harness.db) as conn:
            body = {**subscription(status="off"), "id": sub_id}
            update_subscription(conn, sub_id, body, allowlist=harness.settings.endpoint_allowlist, now=harness.clock())
        return httpx.Response(answer)

    platform.post(HOOK).mock(side_effect=pause_meanwhile)
    assert harness.run_once() == 1
    record = harness.sub(sub_id)
    assert record.status == "off" and record.error is None
    assert harness.resource(sub_id)["status"] == "off"


def test_a_slow_endpoint_does_not_hold_another_subscription(harness: Harness, platform: respx.MockRouter) -> None:
    """``run`` starts each job on its own: one subscription waiting on its endpoint never delays another."""
    slow_hook, quick_hook = "http://platform.test/slow", "http://platform.test/quick"
    slow, quick = harness.subscribe(endpoint=slow_hook), harness.subscribe(endpoint=quick_hook)
    platform.post(quick_hook).respond(200)
    platform.post(slow_hook).respond(200)
    assert harness.run_once() == 2  # both handshakes
    seen: dict[str, bool] = {}

    def delivered(sub_id: str) -> bool:
        return any(r.status == "delivered" for r in harness.rows(sub_id, kind="event-notification"))

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)

    async def main() -> None:
        release = asyncio.Event()

        async def hold(request: httpx.Request) -> httpx.Response:
            await release.wait()
            return httpx.Response(200)

        platform.post(slow_hook).mock(side_effect=hold)
        harness.admit()
        task = asyncio.create_task(harness.worker.run())
        try:
            await until(lambda: delivered(quick))
            seen["quick"], seen["slow meanwhile"] = delivered(quick), delivered(slow)
            release.set()
            await until(lambda: delivered(slow))
            seen["slow"] = delivered(slow)
        finally:
            release.set()
            harness.worker.stop()
            await task

    asyncio.run(main())
    assert seen == {"quick": True, "slow meanwhile": False, "slow": True}


# -- several workers on one store (#14: several instances on one PostgreSQL) ---------------------------


def test_two_workers_claiming_at_once_take_disjoint_rows(harness: Harness, platform: respx.MockRouter) -> None:
    """The one-statement claim, run by two workers at the same instant: every due head goes to exactly one."""
    platform.post(HOOK).respond(200)
    subs = [harness.subscribe() for _ in range(8)]  # eight handshakes due
    other = DeliveryWorker(db=make_engine(harness.settings), settings=harness.settings, client=httpx.AsyncClient())
    other.now = harness.clock
    barrier = threading.Barrier(2)

    def claim(worker: DeliveryWorker) -> list[int]:
        barrier.wait()
        return [row.id for job in worker._claim(limit=5) for row in job.rows]

    try:
        with ThreadPoolExecutor(2) as pool:
            mine, theirs = pool.map(claim, [harness.worker, other])
    finally:
        other.db.dispose()
        asyncio.run(other.client.aclose())
    heads = {row.id for sub in subs for row in harness.rows(sub)}
    assert not set(mine) & set(theirs)
    assert set(mine) | set(theirs) <= heads
    assert len(mine) + len(theirs) == len(heads)  # 5 + 3, or 5 + 5 skipped down to 3: none twice, none lost


def test_two_workers_deliver_each_event_once_in_order(harness: Harness, platform: respx.MockRouter) -> None:
    """Two running workers on one store (two engines, as two instances): each subscription's events arrive
    once each, in order, never two requests of one subscription in flight together."""
    hooks = [f"http://platform.test/hook{n}" for n in range(4)]
    subs = dict(zip(hooks, (harness.subscribe(endpoint=hook) for hook in hooks), strict=True))
    for hook in hooks:
        platform.post(hook).respond(200)
    assert harness.run_once() == len(hooks)  # the handshakes
    for _ in range(6):
        harness.admit()
    received: dict[str, list[int]] = {hook: [] for hook in hooks}
    inflight: dict[str, int] = dict.fromkeys(hooks, 0)
    overlaps: list[str] = []

    async def receive(request: httpx.Request) -> httpx.Response:
        hook = str(request.url)
        inflight[hook] += 1
        if inflight[hook] > 1:
            overlaps.append(hook)
        await asyncio.sleep(0.005)
        received[hook] += numbers(request)
        inflight[hook] -= 1
        return httpx.Response(200)

    for hook in hooks:
        platform.post(hook).mock(side_effect=receive)
    quick = harness.settings.model_copy(update={"worker_poll_interval": 0.02})
    workers = [
        DeliveryWorker(db=make_engine(quick), settings=quick, client=httpx.AsyncClient(), rng=random.Random(n))
        for n in range(2)
    ]
    for worker in workers:
        worker.now = harness.clock

    def done() -> bool:
        return all(r.status == "delivered" for sub in subs.values() for r in harness.rows(sub))

    async def main() -> None:
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        try:
            for _ in range(1000):
                if await asyncio.to_thread(done):
                    break
                await asyncio.sleep(0.02)
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.gather(*tasks)
            for worker in workers:
                await worker.client.aclose()
                worker.db.dispose()

    asyncio.run(main())
    assert done()
    assert overlaps == []
    assert received == {hook: [1, 2, 3, 4, 5, 6] for hook in hooks}
    assert sum(worker.delivered_total for worker in workers) == 6 * len(hooks)


def test_a_claim_is_two_statements_whatever_the_number_of_heads(harness: Harness, platform: respx.MockRouter) -> None:
    """One UPDATE … RETURNING leases every due head, one SELECT reads their subscriptions: the write
    transaction (SQLite's one write lock) stays this short however many subscriptions are due."""
    platform.post(HOOK).respond(200)
    for _ in range(6):
        harness.subscribe()
    current: list[str] = []
    committed: list[str] = []  # statements of the transactions that committed: the write ones

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")):
            current.append(statement.split(None, 1)[0].upper())

    def commit(conn: Any) -> None:
        committed.extend(current)
        current.clear()

    hooks = {"before_cursor_execute": count, "begin": lambda conn: current.clear(), "commit": commit}
    for name, hook in hooks.items():
        event.listen(harness.db, name, hook)
    try:
        jobs = harness.worker._claim()
    finally:
        for name, hook in hooks.items():
            event.remove(harness.db, name, hook)
    assert len(jobs) == 6
    assert committed == ["UPDATE", "SELECT"]


def test_a_backlog_drains_in_runs_with_one_commit_per_run(harness: Harness, platform: respx.MockRouter) -> None:
    """``run`` leases a subscription's pending events as one run (up to ``RUN_AHEAD`` notifications), sends
    them one after another, then records them all and leases the next run in one transaction: a backlog
    of 5 costs 2 commits (the claim, the record), not 5 + 1 (one per event) nor 2n, and goes out in order."""
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe()
    harness.activate(sub_id)
    for _ in range(5):
        harness.admit()
    commits: list[int] = []

    def count(conn: Any) -> None:
        commits.append(1)

    event.listen(harness.db, "commit", count)
    worker = harness.worker

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(500):
                if route.call_count == 6:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # let the last result be recorded
        finally:
            worker.stop()
            await task

    try:
        asyncio.run(main())
    finally:
        event.remove(harness.db, "commit", count)
    assert [numbers for kind, numbers in sent(route)] == [[], [1], [2], [3], [4], [5]]
    assert len(commits) == 2
    assert [r.status for r in harness.rows(sub_id)] == ["delivered"] * 6


def _run_until(harness: Harness, done: Callable[[], bool]) -> None:
    async def main() -> None:
        task = asyncio.create_task(harness.worker.run())
        try:
            for _ in range(1000):
                if done():
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # let the last result be recorded
        finally:
            harness.worker.stop()
            await task

    asyncio.run(main())


def test_a_failure_ends_a_run_and_what_is_behind_it_waits_for_it(harness: Harness, platform: respx.MockRouter) -> None:
    """Event 3 of a run is refused (503): 1 and 2 are recorded delivered, 3 waits for its retry, 4 and 5
    (leased with the run, never sent) are released behind it; once 3 is through, 4 and 5 follow, in order."""
    route = platform.post(HOOK).mock(side_effect=answers(200, 200, 200, 503))  # the handshake, 1, 2, then 3
    sub_id = harness.subscribe()
    harness.activate(sub_id)
    for _ in range(5):
        harness.admit()
    harness.worker.now = lambda: datetime.now(UTC) + timedelta(seconds=10)  # the retry comes due by itself
    _run_until(harness, lambda: route.call_count >= 7)
    assert [numbers for kind, numbers in sent(route)] == [[], [1], [2], [3], [3], [4], [5]]
    rows = harness.rows(sub_id, kind="event-notification")
    assert [r.status for r in rows] == ["delivered"] * 5
    assert [r.attempts for r in rows] == [1, 1, 2, 1, 1]


@pytest.mark.parametrize("max_count", [1, 2])
def test_a_run_whose_time_is_up_releases_the_rest_due_at_once(
    harness: Harness, platform: respx.MockRouter, monkeypatch: pytest.MonkeyPatch, max_count: int
) -> None:
    """With no time for more than one notification per run, each run sends one and releases the rest, which
    goes out next at once (not after its lease): every event once, in order, ``maxCount`` per request."""
    monkeypatch.setattr(worker_module, "RUN_SECONDS", 0.0)
    route = platform.post(HOOK).respond(200)
    sub_id = harness.subscribe(max_count=max_count)
    harness.activate(sub_id)
    for _ in range(5):
        harness.admit()
    requests = -(-5 // max_count) + 1
    _run_until(harness, lambda: route.call_count >= requests)
    expected = [[1], [2], [3], [4], [5]] if max_count == 1 else [[1, 2], [3, 4], [5]]
    assert [numbers for kind, numbers in sent(route)] == [[], *expected]
    assert [r.status for r in harness.rows(sub_id)] == ["delivered"] * 6


def test_a_dead_endpoint_fails_at_its_deadline_and_never_delays_another(
    harness: Harness, platform: respx.MockRouter
) -> None:
    """An endpoint that accepts and never answers: each attempt ends at the subscription's total deadline
    (2 s here) as a retryable failure, while another subscription's events all go out meanwhile."""
    dead_hook, quick_hook = "http://platform.test/dead", "http://platform.test/quick"
    dead = harness.subscribe(endpoint=dead_hook, timeout=2)
    harness.subscribe(endpoint=quick_hook)
    platform.post(dead_hook).respond(200)
    quick_route = platform.post(quick_hook).respond(200)
    assert harness.run_once() == 2  # both handshakes
    for _ in range(3):
        harness.admit()
    timeline: dict[str, float] = {}

    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    platform.post(dead_hook).mock(side_effect=never)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = asyncio.create_task(harness.worker.run())
        try:
            for _ in range(1000):
                if "quick" not in timeline and quick_route.call_count == 4:
                    timeline["quick"] = loop.time() - start
                failed = harness.rows(dead, kind="event-notification")[0]
                if failed.last_error:
                    timeline["dead"] = loop.time() - start
                    timeline["dead attempts"] = failed.attempts
                    break
                await asyncio.sleep(0.01)
        finally:
            harness.worker.stop()
            await task

    asyncio.run(main())
    assert sent(quick_route)[1:] == [
        ("event-notification", [1]),
        ("event-notification", [2]),
        ("event-notification", [3]),
    ]
    assert timeline["quick"] < timeline["dead"]
    assert 0.9 < timeline["dead"] < 5
    assert timeline["dead attempts"] == 1
    assert harness.rows(dead, kind="event-notification")[0].last_error == "deadline exceeded"


def test_claims_fetch_heads_by_id_however_long_the_backlog(tmp_path: Any, mapping_engine: MappingEngine) -> None:
    """Every statement a claim runs reaches outbox rows by primary key or by (status, subscription) index
    probe, never by walking every pending row: with 100,000 events queued that walk cost 70-180 ms per
    event (SQLite, whose planner is deterministic here)."""
    path = tmp_path / "claims.db"
    settings = Settings(database_url=f"sqlite:///{path}", endpoint_allowlist=["platform.test"])
    db = make_engine(settings)
    migrate(db)
    now = datetime.now(UTC) - timedelta(seconds=5)
    with transaction(db) as conn:
        stored, _ = create_subscription(conn, subscription(), allowlist=settings.endpoint_allowlist, now=now)
        OutboxRepo(conn).drop_handshakes(stored.id)
        set_status(conn, stored.id, "active", now=now)
        OutboxRepo(conn).add_many(
            subscription_id=stored.id, topic=f"{TOPIC_BASE}/encounter-start", focus=("Encounter", "e1", 1),
            context=[], occurred_at=now, event_numbers=range(1, 301),
        )  # fmt: skip
    statements: list[tuple[str, Any]] = []

    @event.listens_for(db, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if "outbox" in statement and not statement.lstrip().upper().startswith("INSERT"):
            statements.append((statement, params))

    worker = DeliveryWorker(db=db, settings=settings)
    (run,) = worker._claim_runs()
    assert len(run) == RUN_AHEAD
    next_run = worker._record_run(run, run[:-1], None)  # all but the last sent: it is released, due at once
    assert [job.head.event_number for job in next_run[:1]] == [run[-1].head.event_number]
    failed = DeliveryResult(ok=False, status_code=503, error="HTTP 503", retryable=True)
    assert worker._record_run(next_run, [], (next_run[0], failed)) == []  # the rest released behind it
    db.dispose()
    explained = sqlite3.connect(path)
    plans = [
        " | ".join(row[3] for row in explained.execute("EXPLAIN QUERY PLAN " + sql, params))
        for sql, params in statements
    ]
    assert len(plans) >= 8  # any due, the claims (head, run), the record, the release, the next head and run
    for plan in plans:
        assert "SCAN outbox" not in plan and "SCAN candidate" not in plan, plan
        assert "ix_outbox_due (status=?)" not in plan, plan


def test_deliveries_go_on_while_the_loops_default_threads_are_all_busy(
    harness: Harness, platform: respx.MockRouter
) -> None:
    """Ingest holds the loop's default threads while its messages wait for their group commit: the
    worker runs its database work and endpoint checks on threads of its own, so it is not queued behind."""
    route = platform.post(HOOK).respond(200)
    harness.activate(harness.subscribe())
    harness.admit()
    release = threading.Event()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        hog = loop.run_in_executor(None, release.wait, 30)  # the one default thread, held
        task = asyncio.create_task(harness.worker.run())
        try:
            for _ in range(500):
                if route.call_count == 2:
                    break
                await asyncio.sleep(0.01)
            return route.call_count
        finally:
            release.set()
            harness.worker.stop()
            await task
            await hog

    assert asyncio.run(main()) == 2
    assert sent(route)[1] == ("event-notification", [1])
