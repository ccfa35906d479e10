"""ANS NdE 3.0.0 through the API on SQLite and PostgreSQL: flux 1/2 subscriptions, flux 3 declarations
written by the ingest transaction (and revoked by cancellations), flux 4 orders queued in the outbox, the
guide's own examples accepted as inputs; and the Backport IG points fixed alongside."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.db.repo import OutboxRepo
from gateway.fhir.capability import BACKPORT_OPERATIONS, BACKPORT_SERVER, INSTANTIATES, TOPIC_CANONICAL_EXT
from gateway.runtime import Runtime
from gateway.subscriptions.nde import CAPABILITY_EMITTER, CAPABILITY_NOTIFICATION_MANAGER
from gateway.subscriptions.nde import CAPABILITY_SUBSCRIPTION_MANAGER as SUBSCRIPTION_MANAGER
from gateway.subscriptions.service import expire_ended, set_status
from gateway.subscriptions.topics import TOPIC_BASE, TOPICS
from tests import nde_constraints
from tests.api_helpers import BACKPORT, events, subscribe
from tests.integration.test_merge import MERGED, SURVIVOR, a40, admission
from tests.messages import IPP_SYSTEM, Adt

HL7 = {"Content-Type": "application/hl7-v2"}
EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "nde"
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"  # the test INS OID the message builder uses
INS = "1800175123456"
JSON = dict[str, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"smtp_host": "127.0.0.1"})  # the guide's sub1 is an email subscription


def example(name: str) -> JSON:
    data: JSON = json.loads(next(EXAMPLES.glob(f"{name}_*.json")).read_text(encoding="utf-8"))
    return data


def nde_subscription(*, codes: str = "ADM,SOR", ins: str = INS, **channel: str) -> JSON:
    """The guide's sub1 made ours: Subject by INS, a rest-hook to the platform's FHIR base, no end."""
    sub = example("Exemple1")
    sub["contained"][0]["identifier"] = [{"system": INS_SYSTEM, "value": ins}]
    sub["criteria"] = f"CommunicationRequest?event-type={codes}"
    sub.pop("end")
    sub["channel"] = {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/fhir", **channel}
    return sub


def ingest(client: TestClient, **fields: Any) -> None:
    answer = client.post("/hl7v2", content=Adt(reliability="VALI", ins=INS, **fields).bytes(), headers=HL7)
    assert answer.headers["X-Ack-Code"] == "AA", answer.text


def declarations(client: TestClient, **params: str) -> list[JSON]:
    answer = client.get("/fhir/CommunicationRequest", params=params)
    assert answer.status_code == 200, answer.text
    return [e["resource"] for e in answer.json().get("entry", [])]


# -- flux 1 and 2 -------------------------------------------------------------------------------------


def test_an_nde_subscription_is_created_active_read_back_in_its_profile_and_deleted(client: TestClient) -> None:
    created = client.post("/fhir/Subscription", json=nde_subscription())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "active"  # NdE has no handshake: a notification manager hears only orders
    nde_constraints.check(body)
    read = client.get(f"/fhir/Subscription/{body['id']}").json()
    nde_constraints.check(read)
    assert read["criteria"] == "CommunicationRequest?event-type=ADM,SOR"
    deleted = client.delete(f"/fhir/Subscription/{body['id']}")
    assert deleted.status_code == 200 and deleted.json()["resourceType"] == "OperationOutcome"  # « 200 deleted »
    assert client.get(f"/fhir/Subscription/{body['id']}").status_code == 410


def test_a_malformed_nde_subscription_gets_a_422_naming_the_element(client: TestClient) -> None:
    sub = nde_subscription()
    sub["extension"] = [e for e in sub["extension"] if not e["url"].endswith("/declarant")]
    answer = client.post("/fhir/Subscription", json=sub)
    assert answer.status_code == 422
    issue = answer.json()["issue"][0]
    assert issue["expression"] == ["Subscription.extension[Declarant]"] and "Declarant" in issue["diagnostics"]


def test_the_guide_examples_are_accepted_as_inputs(client: TestClient) -> None:
    sub = client.post("/fhir/Subscription", json=example("Exemple1"))
    assert sub.status_code == 201, sub.text
    assert sub.json()["status"] == "off"  # its end (2020-02-07) has passed: honoured
    nde_constraints.check(sub.json())
    for name, profile in (("Exemple3", nde_constraints.DECLARATION), ("Exemple4", nde_constraints.ORDER)):
        answer = client.post("/fhir/CommunicationRequest", json=example(name))
        assert answer.status_code == 201, answer.text
        stored = client.get(f"/fhir/CommunicationRequest/{answer.json()['id']}").json()
        assert stored["meta"]["profile"] == [profile]
        nde_constraints.check(stored)
    broken = example("Exemple3")
    broken.pop("payload")
    answer = client.post("/fhir/CommunicationRequest", json=broken)
    assert answer.status_code == 422 and "payload" in answer.json()["issue"][0]["diagnostics"]


# -- flux 3: declarations from the ADT feed -----------------------------------------------------------


def test_admission_and_discharge_are_declared_searchable_and_a_cancel_revokes(client: TestClient) -> None:
    ingest(client, control_id="N1")
    (adm,) = declarations(client, **{"event-type": "ADM"})
    nde_constraints.check(adm)
    patient_id = adm["subject"]["reference"][1:]
    assert client.get(f"/fhir/Patient/{patient_id}").status_code == 200  # #<id> is the gateway Patient
    assert adm["status"] == "active" and adm["extension"][1]["valueDateTime"].startswith("2026-03-01T08:00")
    assert declarations(client, subject=f"Patient/{patient_id}", **{"event-type": "ADM"}) == [adm]
    assert declarations(client, **{"patient.identifier": f"{INS_SYSTEM}|{INS}"}) == [adm]
    assert declarations(client, **{"patient.identifier": f"{IPP_SYSTEM}|100001"}) == [adm]
    assert declarations(client, **{"event-type": "SOR"}) == []

    ingest(client, control_id="N2", trigger="A03", movement="MVT-2", event_time="20260305120000")
    (sor,) = declarations(client, **{"event-type": "SOR"})
    nde_constraints.check(sor)
    assert sor["status"] == "active" and sor["encounter"] == adm["encounter"]

    ingest(client, control_id="N3", trigger="A13", movement="MVT-2", action="CANCEL", event_time="20260305130000")
    (revoked,) = declarations(client, **{"event-type": "SOR"})
    assert revoked["id"] == sor["id"] and revoked["status"] == "revoked"
    nde_constraints.check(revoked)
    assert declarations(client, status="revoked") == [revoked]


def test_a_correction_restates_the_declared_event_time(client: TestClient) -> None:
    ingest(client, control_id="C1")
    ingest(client, control_id="C2", trigger="Z99", action="UPDATE", original_trigger="A01", event_time="20260301073000")
    (adm,) = declarations(client, **{"event-type": "ADM"})
    assert adm["status"] == "active" and adm["extension"][1]["valueDateTime"].startswith("2026-03-01T07:30")
    assert adm["meta"]["versionId"] == "2"


# -- flux 4: orders queued for the subscriptions that select the patient -----------------------------


def test_only_the_subscribed_patients_events_are_queued_in_order(client: TestClient, runtime: Runtime) -> None:
    sub_id = client.post("/fhir/Subscription", json=nde_subscription()).json()["id"]
    adm_only = client.post("/fhir/Subscription", json=nde_subscription(codes="ADM")).json()["id"]
    someone_else = client.post("/fhir/Subscription", json=nde_subscription(ins="2900175999999")).json()["id"]
    ingest(client, control_id="Q1")
    ingest(client, control_id="Q2", trigger="A03", movement="MVT-2", event_time="20260305120000")
    ingest(client, control_id="Q3", trigger="A13", movement="MVT-2", action="CANCEL", event_time="20260305130000")
    other = Adt(control_id="Q4", ipp="200002", visit="V-9", movement="MVT-9").bytes()
    assert client.post("/hl7v2", content=other, headers=HL7).headers["X-Ack-Code"] == "AA"

    queued = events(runtime, sub_id)
    assert [r.event_number for r in queued] == [1, 2, 3]  # ADM, SOR, SOR revoked
    assert {r.focus_type for r in queued} == {"CommunicationRequest"}
    assert [r.event_number for r in events(runtime, adm_only)] == [1]
    assert events(runtime, someone_else) == []


def test_an_nde_subscription_hears_a_declaration_posted_by_another_emitter(
    client: TestClient, runtime: Runtime
) -> None:
    sub_id = client.post("/fhir/Subscription", json=nde_subscription(codes="SOR")).json()["id"]
    declaration = example("Exemple3")
    declaration["contained"][0]["identifier"] = [{"system": INS_SYSTEM, "value": INS}]
    assert client.post("/fhir/CommunicationRequest", json=declaration).status_code == 201
    assert [r.event_number for r in events(runtime, sub_id)] == [1]


# -- Backport IG to the letter ---------------------------------------------------------------------------


def test_the_capability_statement_places_topics_where_the_ig_does(client: TestClient) -> None:
    body = client.get("/fhir/metadata").json()
    assert body["instantiates"] == INSTANTIATES
    assert {BACKPORT_SERVER, SUBSCRIPTION_MANAGER, CAPABILITY_NOTIFICATION_MANAGER, CAPABILITY_EMITTER} <= set(
        body["instantiates"]
    )
    server = body["rest"][0]
    by_type = {r["type"]: r for r in server["resource"]}
    sub = by_type["Subscription"]
    assert {e["valueCanonical"] for e in sub["extension"] if e["url"] == TOPIC_CANONICAL_EXT} == {t.url for t in TOPICS}
    assert f"{BACKPORT}/backport-subscription" in sub["supportedProfile"]
    assert {p["name"] for p in sub["searchParam"]} >= {"url", "status"}
    assert {(o["name"], o["definition"]) for o in sub["operation"]} == set(BACKPORT_OPERATIONS.items())
    assert {i["code"] for i in sub["interaction"]} >= {"create", "update", "delete", "read", "search-type"}
    assert {p["name"] for p in by_type["Basic"]["searchParam"]} == {"url"}
    request = by_type["CommunicationRequest"]
    assert {p["name"] for p in request["searchParam"]} >= {"event-type", "subject", "patient.identifier"}
    assert {i["code"] for i in request["interaction"]} >= {"create", "read", "search-type"}
    assert body["rest"][1]["mode"] == "client"  # the emitter side: flux 4 create towards the platforms


def test_subscriptions_are_searchable_by_topic_url_and_status_works_at_type_level(client: TestClient) -> None:
    start = subscribe(client, "encounter-start", "Encounter?class=IMP")
    end = subscribe(client, "encounter-end", "Encounter?class=IMP")
    found = client.get("/fhir/Subscription", params={"url": f"{TOPIC_BASE}/encounter-end"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [end]
    both = client.get("/fhir/Subscription/$status", params={"id": f"{start},{end}"}).json()
    assert both["type"] == "searchset" and both["total"] == 2
    subs = {
        p["valueReference"]["reference"].rsplit("/", 1)[-1]
        for e in both["entry"]
        for p in e["resource"]["parameter"]
        if p["name"] == "subscription"
    }
    assert subs == {start, end}
    assert client.get("/fhir/Subscription/$status").json()["total"] == 2


def test_returned_subscriptions_carry_their_profile_and_payload_content(client: TestClient) -> None:
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "no payload content given",
        "criteria": f"{TOPIC_BASE}/encounter-start",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"},
    }
    created = client.post("/fhir/Subscription", json=body).json()
    read = client.get(f"/fhir/Subscription/{created['id']}").json()
    for resource in (created, read):
        assert resource["meta"]["profile"] == [f"{BACKPORT}/backport-subscription"]
        assert resource["channel"]["_payload"]["extension"] == [
            {"url": f"{BACKPORT}/backport-payload-content", "valueCode": "id-only"}
        ]
        assert resource["channel"]["payload"] == "application/fhir+json"


def test_end_is_honoured(client: TestClient, runtime: Runtime) -> None:
    past = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "ended",
        "criteria": f"{TOPIC_BASE}/encounter-start",
        "end": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"},
    }
    created = client.post("/fhir/Subscription", json=past).json()
    assert created["status"] == "off"
    soon = {**past, "end": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    live_id = client.post("/fhir/Subscription", json=soon).json()["id"]
    ingest(client, control_id="E1")
    assert events(runtime, created["id"]) == []
    assert [r.event_number for r in events(runtime, live_id)] == [1]

    with transaction(runtime.db) as conn:
        assert expire_ended(conn, now=datetime.now(UTC) + timedelta(hours=2)) == [live_id]
    assert client.get(f"/fhir/Subscription/{live_id}").json()["status"] == "off"
    bad = client.post("/fhir/Subscription", json={**past, "end": "2030-01-01T00:00:00"})  # an instant needs its offset
    assert bad.status_code == 400 and "end" in bad.json()["issue"][0]["diagnostics"]


def test_start_is_honoured_and_a_put_changes_what_is_selected(client: TestClient, runtime: Runtime) -> None:
    later = nde_subscription()
    later["extension"][1]["valueDateTime"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    waiting = client.post("/fhir/Subscription", json=later).json()["id"]
    sub = nde_subscription(codes="SOR")
    sub_id = client.post("/fhir/Subscription", json=sub).json()["id"]
    ingest(client, control_id="S1")
    assert events(runtime, waiting) == []  # not valid before its Start
    assert events(runtime, sub_id) == []  # SOR only
    changed = client.put(f"/fhir/Subscription/{sub_id}", json={**nde_subscription(codes="ADM"), "id": sub_id})
    assert changed.status_code == 200, changed.text
    nde_constraints.check(changed.json())
    ingest(client, control_id="S2", visit="V-2", movement="MVT-22")
    assert [r.event_number for r in events(runtime, sub_id)] == [1]
    assert client.get("/fhir/CommunicationRequest", params={"event-type": "ADM,SOR"}).status_code == 400


def test_after_a_merge_the_subscription_hears_the_survivors_events(client: TestClient, runtime: Runtime) -> None:
    sub = nde_subscription(codes="ADM")
    sub["contained"][0]["identifier"] = [{"system": IPP_SYSTEM, "value": MERGED}]  # by IPP, with its system
    sub_id = client.post("/fhir/Subscription", json=sub).json()["id"]
    for message in (
        admission(MERGED, "V-M", "M1", "20260301080000").bytes(),
        a40("M2", "20260302080000").encode(),
        admission(SURVIVOR, "V-S", "M3", "20260304080000").bytes(),
    ):
        assert client.post("/hl7v2", content=message, headers=HL7).headers["X-Ack-Code"] == "AA"
    assert [r.event_number for r in events(runtime, sub_id)] == [1, 2]  # the merged's stay, then the survivor's
    survivor_id = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|{SURVIVOR}"}).json()["entry"][0]
    found = declarations(client, subject=f"Patient/{survivor_id['resource']['id']}")
    assert len(found) == 2  # the merged patient's stay and its declaration followed the survivor


def test_an_nde_subscription_in_error_is_resent_without_a_handshake(client: TestClient, runtime: Runtime) -> None:
    sub_id = client.post("/fhir/Subscription", json=nde_subscription()).json()["id"]
    ingest(client, control_id="R1")
    with transaction(runtime.db) as conn:
        set_status(conn, sub_id, "error", now=datetime.now(UTC), error="event-notification delivery failed: HTTP 500")
    answer = client.post(f"/admin/subscriptions/{sub_id}/resend")
    assert answer.status_code == 200, answer.text
    assert client.get(f"/fhir/Subscription/{sub_id}").json()["status"] == "active"
    queued = events(runtime, sub_id)
    assert [(r.event_number, r.status, r.attempts) for r in queued] == [(1, "pending", 0)]
    with runtime.db.connect() as conn:
        kinds = {r.notification_type for r in OutboxRepo(conn).for_subscription(sub_id)}
    assert kinds == {"event-notification"}  # NdE has no handshake to queue
