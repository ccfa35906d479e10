"""Subscriptions over the HTTP API on a real store: update, delete, search, $events, filters, numbering, email.

The app runs without its worker (``start_services=False``): a handshake is "delivered" by
:func:`activate`, which records what the worker records on success; delivery itself is covered by
``tests/integration/test_worker.py`` and ``tests/e2e/test_delivery.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.db.repo import OutboxRecord, OutboxRepo, SubscriptionRepo
from gateway.pipeline import utcnow
from gateway.runtime import Runtime
from gateway.subscriptions.service import SIGNING_SECRET, set_status
from gateway.subscriptions.topics import TOPIC_BASE
from tests.messages import IPP_SYSTEM, Adt

HL7 = {"Content-Type": "application/hl7-v2"}
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
HOOK = "http://127.0.0.1:9/hook"
JSON = dict[str, Any]


def body(
    *,
    criteria: str | None = f"Encounter?patient.identifier={IPP_SYSTEM}|100001",
    topic: str = "encounter-start",
    endpoint: str = HOOK,
    channel_type: str = "rest-hook",
    content: str = "id-only",
    status: str = "requested",
) -> JSON:
    resource: JSON = {
        "resourceType": "Subscription",
        "status": status,
        "reason": "integration test",
        "criteria": f"{TOPIC_BASE}/{topic}",
        "channel": {
            "type": channel_type,
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]},
        },
    }
    if criteria is not None:
        resource["_criteria"] = {
            "extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": criteria}]
        }
    return resource


def create(client: TestClient, resource: JSON | None = None) -> JSON:
    answer = client.post("/fhir/Subscription", json=resource or body())
    assert answer.status_code == 201, answer.text
    created: JSON = answer.json()
    return created


def public(created: JSON) -> JSON:
    """The created resource as a platform would PUT it back (no meta, no secret shown once)."""
    out = {k: v for k, v in created.items() if k != "meta"}
    channel = dict(out["channel"])
    channel["extension"] = [e for e in channel.get("extension", []) if e["url"] != SIGNING_SECRET]
    if not channel["extension"]:
        channel.pop("extension")
    out["channel"] = channel
    return out


def rows(runtime: Runtime, sub_id: str, *, kind: str | None = None) -> list[OutboxRecord]:
    with runtime.db.connect() as conn:
        found = OutboxRepo(conn).for_subscription(sub_id)
    return [r for r in found if kind is None or r.notification_type == kind]


def pending_handshakes(runtime: Runtime, sub_id: str) -> int:
    return sum(1 for r in rows(runtime, sub_id, kind="handshake") if r.status == "pending")


def activate(runtime: Runtime, sub_id: str) -> None:
    """What the worker records when a handshake is answered 2xx."""
    with transaction(runtime.db) as conn:
        outbox = OutboxRepo(conn)
        for row in outbox.for_subscription(sub_id, statuses=["pending"]):
            if row.notification_type == "handshake":
                outbox.delivered([row.id], now=utcnow())
        set_status(conn, sub_id, "active", now=utcnow())


class Feed:
    """Sends ADT messages over POST /hl7v2 with fresh control ids, visits and movements."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.n = 0

    def send(self, **fields: Any) -> None:
        self.n += 1
        defaults = {"control_id": f"M-{self.n}", "visit": f"V-{self.n}", "movement": f"MVT-{self.n}"}
        raw = Adt(**{**defaults, **fields}).bytes()
        answer = self.client.post("/hl7v2", content=raw, headers=HL7)
        assert answer.status_code == 200 and answer.headers["x-ack-code"] == "AA", answer.text


@pytest.fixture
def feed(client: TestClient) -> Feed:
    return Feed(client)


def event_parts(bundle: JSON) -> list[dict[str, JSON]]:
    status = bundle["entry"][0]["resource"]
    return [{p["name"]: p for p in e["part"]} for e in status["parameter"] if e["name"] == "notification-event"]


def event_numbers(bundle: JSON) -> list[int]:
    return [int(e["event-number"]["valueString"]) for e in event_parts(bundle)]


def events(client: TestClient, sub_id: str, **params: Any) -> JSON:
    answer = client.get(f"/fhir/Subscription/{sub_id}/$events", params=params)
    assert answer.status_code == 200, answer.text
    bundle: JSON = answer.json()
    return bundle


def status_params(client: TestClient, sub_id: str) -> dict[str, JSON]:
    answer = client.get(f"/fhir/Subscription/{sub_id}/$status")
    assert answer.status_code == 200, answer.text
    return {p["name"]: p for p in answer.json()["entry"][0]["resource"]["parameter"]}


# -- update ----------------------------------------------------------------------------------------


def test_put_new_endpoint_asks_for_a_new_handshake(client: TestClient, runtime: Runtime) -> None:
    created = create(client)
    sub_id = created["id"]
    activate(runtime, sub_id)
    assert pending_handshakes(runtime, sub_id) == 0

    changed = public(created)
    changed["status"] = "active"
    changed["channel"]["endpoint"] = "http://127.0.0.1:10/other-hook"
    answer = client.put(f"/fhir/Subscription/{sub_id}", json=changed)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "requested"
    assert answer.json()["channel"]["endpoint"] == "http://127.0.0.1:10/other-hook"
    assert pending_handshakes(runtime, sub_id) == 1
    read = client.get(f"/fhir/Subscription/{sub_id}").json()
    assert read["status"] == "requested" and SIGNING_SECRET not in str(read)
    with runtime.db.connect() as conn:
        record = SubscriptionRepo(conn).get(sub_id)
    assert record is not None and record.endpoint.endswith("/other-hook")
    assert record.secret == next(
        e["valueString"] for e in created["channel"]["extension"] if e["url"] == SIGNING_SECRET
    )


def test_put_new_endpoint_while_requested_gets_a_fresh_handshake(client: TestClient, runtime: Runtime) -> None:
    created = create(client)
    sub_id = created["id"]
    with transaction(runtime.db) as conn:  # the first endpoint failed its handshake twice already
        (row,) = OutboxRepo(conn).for_subscription(sub_id)
        for _ in range(2):
            OutboxRepo(conn).failed(row.id, error="HTTP 500", next_attempt_at=utcnow(), now=utcnow())
    changed = public(created)
    changed["channel"]["endpoint"] = "http://127.0.0.1:10/fixed-hook"
    assert client.put(f"/fhir/Subscription/{sub_id}", json=changed).status_code == 200
    handshakes = [r for r in rows(runtime, sub_id, kind="handshake") if r.status == "pending"]
    assert handshakes and all(r.attempts == 0 for r in handshakes)


def test_put_new_filters_apply_to_the_next_messages(client: TestClient, runtime: Runtime, feed: Feed) -> None:
    created = create(client)
    sub_id = created["id"]
    activate(runtime, sub_id)
    feed.send(ipp="100001")
    feed.send(ipp="200002")
    assert event_numbers(events(client, sub_id)) == [1]

    changed = public(created)
    changed["status"] = "active"
    changed["_criteria"]["extension"][0]["valueString"] = f"Encounter?patient.identifier={IPP_SYSTEM}|200002"
    answer = client.put(f"/fhir/Subscription/{sub_id}", json=changed)
    assert answer.status_code == 200
    assert answer.json()["status"] == "active"  # same endpoint: no new handshake needed
    assert pending_handshakes(runtime, sub_id) == 0

    feed.send(ipp="100001")
    feed.send(ipp="200002")
    got = rows(runtime, sub_id, kind="event-notification")
    assert [r.event_number for r in got] == [1, 2]
    patient_of = {
        r.event_number: client.get(f"/fhir/{r.focus_type}/{r.focus_id}").json()["subject"]["reference"] for r in got
    }
    assert patient_of[1] != patient_of[2]


def test_put_status_off_records_nothing_until_reactivated(client: TestClient, runtime: Runtime, feed: Feed) -> None:
    created = create(client)
    sub_id = created["id"]
    activate(runtime, sub_id)
    feed.send()
    paused = public(created)
    paused["status"] = "off"
    answer = client.put(f"/fhir/Subscription/{sub_id}", json=paused)
    assert answer.status_code == 200 and answer.json()["status"] == "off"

    feed.send()
    feed.send()
    assert [r.event_number for r in rows(runtime, sub_id, kind="event-notification")] == [1]
    assert status_params(client, sub_id)["events-since-subscription-start"]["valueString"] == "1"
    assert status_params(client, sub_id)["status"]["valueCode"] == "off"
    assert client.get("/fhir/Subscription", params={"status": "off"}).json()["total"] == 1

    resumed = public(created)
    resumed["status"] = "requested"
    answer = client.put(f"/fhir/Subscription/{sub_id}", json=resumed)
    assert answer.status_code == 200 and answer.json()["status"] == "requested"
    assert pending_handshakes(runtime, sub_id) == 1
    feed.send()
    assert [r.event_number for r in rows(runtime, sub_id, kind="event-notification")] == [1, 2]


def test_put_with_a_stale_if_match_is_refused(client: TestClient, runtime: Runtime) -> None:
    created = create(client)
    sub_id = created["id"]
    activate(runtime, sub_id)  # version 2
    read = client.get(f"/fhir/Subscription/{sub_id}")
    assert read.headers["etag"] == 'W/"2"'

    stale = client.put(f"/fhir/Subscription/{sub_id}", json=public(created), headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Subscription/{sub_id}").json()["status"] == "active"  # untouched

    paused = public(created)
    paused["status"] = "off"
    fresh = client.put(f"/fhir/Subscription/{sub_id}", json=paused, headers={"If-Match": 'W/"2"'})
    assert fresh.status_code == 200 and fresh.json()["status"] == "off"
    assert fresh.headers["etag"] == 'W/"3"'


def test_put_refusals(client: TestClient) -> None:
    created = create(client)
    sub_id = created["id"]
    assert client.put("/fhir/Subscription/nope", json=public(created) | {"id": "nope"}).status_code == 404
    assert client.put(f"/fhir/Subscription/{sub_id}", json=public(created) | {"id": "other"}).status_code == 400
    bad = public(created)
    bad["channel"]["endpoint"] = "https://10.0.0.8/hook"
    answer = client.put(f"/fhir/Subscription/{sub_id}", json=bad)
    assert answer.status_code == 400 and answer.json()["issue"][0]["code"] == "security"


# -- delete ----------------------------------------------------------------------------------------


def test_delete_then_read_is_gone_and_no_more_events(client: TestClient, runtime: Runtime, feed: Feed) -> None:
    created = create(client)
    sub_id = created["id"]
    activate(runtime, sub_id)
    feed.send()
    assert len(rows(runtime, sub_id, kind="event-notification")) == 1

    assert client.delete(f"/fhir/Subscription/{sub_id}").status_code == 200  # NdE flux 2: « 200 deleted »
    assert client.get(f"/fhir/Subscription/{sub_id}").status_code == 410
    assert client.get(f"/fhir/Subscription/{sub_id}/$status").status_code == 404
    assert client.get(f"/fhir/Subscription/{sub_id}/$events").status_code == 404
    assert client.get("/fhir/Subscription", params={"status": "active"}).json()["total"] == 0
    feed.send()
    # Undelivered rows went with it (only the delivered handshake stays), and nothing new is recorded.
    assert [(r.notification_type, r.status) for r in rows(runtime, sub_id)] == [("handshake", "delivered")]
    assert client.delete(f"/fhir/Subscription/{sub_id}").status_code == 404
    assert client.put(f"/fhir/Subscription/{sub_id}", json=public(created)).status_code == 404


# -- search ----------------------------------------------------------------------------------------


def test_search_subscriptions_by_status(client: TestClient, runtime: Runtime) -> None:
    first = create(client)["id"]
    second = create(client, body(topic="encounter-end"))["id"]
    activate(runtime, first)

    def ids(status: str) -> list[str]:
        found = client.get("/fhir/Subscription", params={"status": status}).json()
        return [e["resource"]["id"] for e in found.get("entry", [])]

    assert ids("active") == [first]
    assert ids("requested") == [second]
    assert ids("error") == []
    assert sorted(e["resource"]["id"] for e in client.get("/fhir/Subscription").json()["entry"]) == sorted(
        [first, second]
    )


# -- $events ---------------------------------------------------------------------------------------


def test_events_by_number_range(client: TestClient, runtime: Runtime, feed: Feed) -> None:
    sub_id = create(client)["id"]
    activate(runtime, sub_id)
    for _ in range(4):
        feed.send()

    assert event_numbers(events(client, sub_id)) == [1, 2, 3, 4]
    assert event_numbers(events(client, sub_id, eventsSinceNumber=2, eventsUntilNumber=3)) == [2, 3]
    assert event_numbers(events(client, sub_id, eventsSinceNumber=3)) == [3, 4]
    assert event_numbers(events(client, sub_id, eventsUntilNumber=1)) == [1]
    assert event_numbers(events(client, sub_id, eventsSinceNumber=9)) == []
    bundle = events(client, sub_id, eventsSinceNumber=2, eventsUntilNumber=2)
    params = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
    assert params["type"]["valueCode"] == "query-event"
    assert params["events-since-subscription-start"]["valueString"] == "4"
    assert client.get(f"/fhir/Subscription/{sub_id}/$events", params={"eventsSinceNumber": 0}).status_code == 400
    assert client.get(f"/fhir/Subscription/{sub_id}/$events", params={"content": "all"}).status_code == 400


def test_events_content_override(client: TestClient, runtime: Runtime, feed: Feed) -> None:
    sub_id = create(client)["id"]  # id-only
    activate(runtime, sub_id)
    feed.send(control_id="ADM", visit="V-9", movement="MVT-A")
    feed.send(
        trigger="A03",
        control_id="DIS",
        visit="V-9",
        movement="MVT-D",
        event_time="20260305120000",
        discharge_time="20260305120000",
    )
    (row,) = rows(runtime, sub_id, kind="event-notification")
    encounter = client.get(f"/fhir/Encounter/{row.focus_id}").json()
    assert encounter["status"] == "finished" and encounter["meta"]["versionId"] == "2"

    default = events(client, sub_id)
    (event,) = event_parts(default)
    assert event["focus"]["valueReference"]["reference"].endswith(f"Encounter/{row.focus_id}")
    assert all("resource" not in e for e in default["entry"][1:])

    empty = events(client, sub_id, content="empty")
    (event,) = event_parts(empty)
    assert set(event) == {"event-number", "timestamp"}  # no focus, no context: nothing identifies anyone
    assert len(empty["entry"]) == 1

    full = events(client, sub_id, content="full-resource")
    (event,) = event_parts(full)
    focus_url = event["focus"]["valueReference"]["reference"]
    (entry,) = [e for e in full["entry"][1:] if e["fullUrl"] == focus_url]
    assert entry["resource"]["resourceType"] == "Encounter"
    assert entry["resource"]["status"] == "in-progress"  # the version the admission produced, not today's
    assert entry["resource"]["meta"]["versionId"] == "1"
    assert entry["response"]["etag"] == 'W/"1"'
    patient_ref = encounter["subject"]["reference"]
    assert any(e["fullUrl"].endswith(patient_ref) and "resource" in e for e in full["entry"][1:])


# -- filters ---------------------------------------------------------------------------------------


def test_filters_on_ingested_messages(client: TestClient, runtime: Runtime, feed: Feed) -> None:
    feed.send(ipp="100001")  # makes the patient known so that a filter can name its id
    patient_id = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|100001"}).json()["entry"][0][
        "resource"
    ]["id"]
    subs = {
        "with-system": create(client, body(criteria=f"Encounter?patient.identifier={IPP_SYSTEM}|100001"))["id"],
        "any-system": create(client, body(criteria="Encounter?patient.identifier=100001"))["id"],
        "wrong-system": create(client, body(criteria="Encounter?patient.identifier=urn:oid:9.9.9|100001"))["id"],
        "patient-ref": create(client, body(criteria=f"Encounter?patient=Patient/{patient_id}"))["id"],
        "patient-id": create(client, body(criteria=f"Encounter?patient={patient_id}"))["id"],
        "outpatients": create(client, body(criteria="Encounter?class=AMB"))["id"],
        "inpatient-100001": create(client, body(criteria="Encounter?patient.identifier=100001&class=IMP"))["id"],
        "everything": create(client, body(criteria=None))["id"],
    }
    for sub_id in subs.values():
        activate(runtime, sub_id)

    feed.send(ipp="100001", patient_class="I")  # inpatient stay of 100001
    feed.send(ipp="100001", patient_class="O")  # outpatient visit of 100001
    feed.send(ipp="300003", patient_class="O")  # outpatient visit of someone else
    feed.send(ipp="300003", patient_class="I")  # inpatient stay of someone else

    def visits(name: str) -> list[str]:
        got = rows(runtime, subs[name], kind="event-notification")
        assert [r.event_number for r in got] == list(range(1, len(got) + 1))
        return [client.get(f"/fhir/Encounter/{r.focus_id}").json()["identifier"][0]["value"] for r in got]

    assert visits("with-system") == ["V-2", "V-3"]
    assert visits("any-system") == ["V-2", "V-3"]
    assert visits("wrong-system") == []
    assert visits("patient-ref") == ["V-2", "V-3"]
    assert visits("patient-id") == ["V-2", "V-3"]
    assert visits("outpatients") == ["V-3", "V-4"]
    assert visits("inpatient-100001") == ["V-2"]
    assert visits("everything") == ["V-2", "V-3", "V-4", "V-5"]


def test_event_numbers_are_gapless_per_subscription(client: TestClient, runtime: Runtime, feed: Feed) -> None:
    mine = create(client)["id"]
    ends = create(client, body(topic="encounter-end"))["id"]
    activate(runtime, mine)
    # `ends` stays requested: it records its events behind the handshake all the same.
    for i in range(6):
        feed.send(ipp="100001")  # admission: mine
        feed.send(ipp="400004")  # another patient: nobody
        if i % 2:
            feed.send(
                trigger="A03",
                ipp="100001",
                control_id=f"D-{i}",
                visit=f"V-{feed.n - 1}",
                movement=f"MVT-D{i}",
                event_time="20260305120000",
                discharge_time="20260305120000",
            )
    raw = Adt(control_id="M-1", visit="V-1", movement="MVT-1").bytes()
    assert client.post("/hl7v2", content=raw, headers=HL7).headers["x-ack-code"] == "AA"  # duplicate: no event

    mine_rows = rows(runtime, mine, kind="event-notification")
    assert [r.event_number for r in mine_rows] == list(range(1, 7))
    assert len({r.focus_id for r in mine_rows}) == 6
    ends_rows = rows(runtime, ends, kind="event-notification")
    assert [r.event_number for r in ends_rows] == [1, 2, 3]
    assert status_params(client, mine)["events-since-subscription-start"]["valueString"] == "6"
    assert status_params(client, ends)["events-since-subscription-start"]["valueString"] == "3"
    assert event_numbers(events(client, mine)) == [1, 2, 3, 4, 5, 6]


# -- email channel ---------------------------------------------------------------------------------


def test_email_channel_needs_an_smtp_relay(client: TestClient) -> None:
    answer = client.post(
        "/fhir/Subscription", json=body(channel_type="email", endpoint="mailto:dac@mssante.example.fr")
    )
    assert answer.status_code == 400
    issue = answer.json()["issue"][0]
    assert issue["code"] == "not-supported" and "GATEWAY_SMTP_HOST" in issue["diagnostics"]
    assert client.get("/fhir/Subscription").json()["total"] == 0


@pytest.fixture
def mail_client(settings: Settings) -> Iterator[TestClient]:
    rt = Runtime.build(settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": 2525}))
    with TestClient(create_app(rt, start_services=False), raise_server_exceptions=False) as c:
        yield c
    rt.close()


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://platform.example/hook",
        "dac@mssante.example.fr",
        "mailto:",
        "mailto:a@mssante.example.fr,b@mssante.example.fr",
        "mailto:dac@mssante.example.fr\r\nBcc: x@evil.example",
    ],
    ids=["https", "bare-address", "empty", "two-addresses", "header-injection"],
)
def test_email_endpoint_must_be_one_mailto_address(mail_client: TestClient, endpoint: str) -> None:
    answer = mail_client.post("/fhir/Subscription", json=body(channel_type="email", endpoint=endpoint))
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["code"] == "value"


def test_email_subscription_accepted_with_a_relay(mail_client: TestClient) -> None:
    created = mail_client.post(
        "/fhir/Subscription", json=body(channel_type="email", endpoint="mailto:dac@mssante.example.fr")
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "requested"
    full = mail_client.post(
        "/fhir/Subscription",
        json=body(channel_type="email", endpoint="mailto:dac@mssante.example.fr", content="full-resource"),
    )
    assert full.status_code == 400  # no clinical content by mail
