"""#13: platforms see only their own subscriptions and the patients they follow; secrets stay write-only;
senders post only as their facilities; accesses are audited and readable as AuditEvent by operators."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.auth.clients import set_authorities
from gateway.db.engine import transaction
from gateway.db.repo import SubscriptionRepo
from gateway.runtime import Runtime
from tests.api_helpers import events
from tests.auth_helpers import login, register, subscribe_as, subscription_body
from tests.messages import IPP_AUTH, IPP_SYSTEM, Adt

HL7 = {"Content-Type": "application/hl7-v2"}
SECRET_HEADER = "Authorization: Bearer platform-a-own-token"


@dataclass
class World:
    client: TestClient
    runtime: Runtime
    ops: dict[str, str]
    a: dict[str, str]
    b: dict[str, str]
    alice: str  # followed by A
    bob: str  # followed by nobody
    sub_a: str


def _patient_id(client: TestClient, ops: dict[str, str], ipp: str) -> str:
    found = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|{ipp}"}, headers=ops).json()
    return str(found["entry"][0]["resource"]["id"])


@pytest.fixture
def world(runtime: Runtime) -> Iterator[World]:
    with TestClient(create_app(runtime, start_services=False), raise_server_exceptions=False) as client:
        ops = login(client, runtime, "operator", "ops")
        a = login(client, runtime, "platform", "PlatformA")
        b = login(client, runtime, "platform", "PlatformB")
        for n, ipp in enumerate(("100001", "200002")):
            outcome = runtime.pipeline.ingest(
                Adt(ipp=ipp, visit=f"V-{n}", control_id=f"M-{n}").bytes(), transport="test"
            )
            assert outcome.code == "AA"
        sub_a = subscribe_as(
            client, a, "encounter-start", f"Encounter?patient.identifier={IPP_SYSTEM}|100001", header=SECRET_HEADER
        )
        yield World(
            client, runtime, ops, a, b, _patient_id(client, ops, "100001"), _patient_id(client, ops, "200002"), sub_a
        )


def test_another_platforms_subscription_is_404_and_absent_from_searches(world: World) -> None:
    c, a, b, sub = world.client, world.a, world.b, world.sub_a
    assert c.get(f"/fhir/Subscription/{sub}", headers=a).status_code == 200
    body = subscription_body("encounter-start", f"Encounter?patient.identifier={IPP_SYSTEM}|100001")
    body["id"] = sub
    for method, path in (
        ("GET", f"/fhir/Subscription/{sub}"),
        ("GET", f"/fhir/Subscription/{sub}/_history"),
        ("GET", f"/fhir/Subscription/{sub}/_history/1"),
        ("GET", f"/fhir/Subscription/{sub}/$status"),
        ("GET", f"/fhir/Subscription/{sub}/$events"),
        ("PUT", f"/fhir/Subscription/{sub}"),
        ("DELETE", f"/fhir/Subscription/{sub}"),
    ):
        answer = c.request(method, path, headers=b, json=body if method == "PUT" else None)
        assert answer.status_code == 404, (method, path, answer.text)
    assert c.get("/fhir/Subscription", headers=b).json()["total"] == 0
    assert c.get("/fhir/Subscription", headers=a).json()["total"] == 1
    with world.runtime.db.connect() as conn:
        stored = SubscriptionRepo(conn).get(sub)
    assert stored is not None and stored.endpoint == "http://127.0.0.1:9/hook"  # B's PUT changed nothing


def test_a_platform_reads_only_the_patients_it_follows(world: World) -> None:
    c, a, b = world.client, world.a, world.b
    assert c.get(f"/fhir/Patient/{world.alice}", headers=a).status_code == 200
    for path in (f"/fhir/Patient/{world.bob}", f"/fhir/Patient/{world.bob}/_history", f"/fhir/Patient/{world.alice}"):
        headers = a if world.bob in path else b
        answer = c.get(path, headers=headers)
        assert answer.status_code == 404, path
        assert world.bob not in answer.text or world.bob in path
    everyone = c.get("/fhir/Patient", headers=a).json()
    assert everyone["total"] == 1 and [e["resource"]["id"] for e in everyone["entry"]] == [world.alice]
    stays = c.get("/fhir/Encounter", headers=a).json()
    assert stays["total"] >= 1
    assert all(e["resource"]["subject"]["reference"] == f"Patient/{world.alice}" for e in stays["entry"])
    assert c.get("/fhir/Encounter", params={"patient": world.bob}, headers=a).json()["total"] == 0
    assert c.get("/fhir/Patient", headers=b).json()["total"] == 0
    assert c.get("/fhir/Patient", headers=world.ops).json()["total"] == 2


def test_a_subscription_naming_nobody_needs_the_population_scope(world: World) -> None:
    c = world.client
    body = subscription_body("encounter-start", "Encounter?class=IMP")
    refused = c.post("/fhir/Subscription", json=body, headers=world.b)
    assert refused.status_code == 403 and "gateway/population" in refused.text
    wide = login(c, world.runtime, "platform", "Regional", scopes=["system/*.cruds", "gateway/population"])
    assert c.post("/fhir/Subscription", json=body, headers=wide).status_code == 201
    assert c.get("/fhir/Patient", headers=wide).json()["total"] == 2


def test_channel_headers_are_write_only(world: World) -> None:
    c, a, sub = world.client, world.a, world.sub_a
    token = SECRET_HEADER.split(": ", 1)[1]
    read = c.get(f"/fhir/Subscription/{sub}", headers=a).json()
    assert read["channel"]["header"] == ["Authorization: ***"]
    for path in (f"/fhir/Subscription/{sub}/_history", "/fhir/Subscription", f"/fhir/Subscription/{sub}/$status"):
        assert token not in c.get(path, headers=a).text
        assert token not in c.get(path, headers=world.ops).text
    read["status"] = "requested"
    assert c.put(f"/fhir/Subscription/{sub}", json=read, headers=a).status_code == 200
    with world.runtime.db.connect() as conn:
        stored = SubscriptionRepo(conn).get(sub)
    assert stored is not None and stored.headers == [SECRET_HEADER]  # the mask sent back kept the value


def test_care_circle_membership_is_followed_and_edits_are_own_only(world: World) -> None:
    c, a, b = world.client, world.a, world.b
    team = c.get("/fhir/CareTeam", params={"patient": world.alice}, headers=a).json()["entry"][0]["resource"]["id"]
    assert c.post(f"/fhir/CareTeam/{team}/$add-member", json=_member("111"), headers=b).status_code == 404
    assert c.post(f"/fhir/CareTeam/{team}/$add-member", json=_member("222"), headers=a).status_code == 200
    wide = login(c, world.runtime, "platform", "Wide", scopes=["system/*.cruds", "gateway/population"])
    assert c.post(f"/fhir/CareTeam/{team}/$add-member", json=_member("333"), headers=wide).status_code == 200
    ended = c.post(f"/fhir/CareTeam/{team}/$end-member", json=_member("333"), headers=a)
    assert ended.status_code in (404, 422)  # not A's member to end
    # 200 with an OperationOutcome: ANS NdE flux 2 answers « 200 deleted »
    assert c.delete(f"/fhir/Subscription/{world.sub_a}", headers=a).status_code == 200
    # no subscription any more, but A added a member to Alice's circle: A still follows her
    assert c.get(f"/fhir/Patient/{world.alice}", headers=a).status_code == 200
    assert c.get(f"/fhir/Patient/{world.bob}", headers=a).status_code == 404


def _member(rpps: str) -> dict[str, object]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "member",
                "valueReference": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": rpps}},
            }
        ],
    }


def test_a_sender_posts_only_as_its_facilities(world: World) -> None:
    c = world.client
    sender = login(c, world.runtime, "sender", "CHU-Test", facilities=["CH-TEST"])
    ok = c.post("/hl7v2", content=Adt(control_id="S-1", ipp="300003").bytes(), headers={**HL7, **sender})
    assert ok.headers["x-ack-code"] == "AA"
    other = c.post("/hl7v2", content=Adt(control_id="S-2", facility="CH-OTHER").bytes(), headers={**HL7, **sender})
    assert other.headers["x-ack-code"] == "AR"
    assert "MSH-4" in other.text and "not a facility registered" in other.text
    journal = c.get("/admin/messages", params={"outcome": "AR"}, headers=world.ops).json()
    assert journal["messages"][0]["control_id"] == "S-2"  # kept
    assert c.get("/fhir/Patient", headers=sender).status_code == 403
    assert c.post("/hl7v2", content=Adt().bytes(), headers={**HL7, **world.a}).status_code == 403


def test_accesses_are_audited_and_searchable_by_operators(world: World) -> None:
    c, a = world.client, world.a
    c.get(f"/fhir/Patient/{world.alice}", headers=a)
    c.get("/fhir/Encounter", headers=a)
    c.get(f"/fhir/Patient/{world.bob}", headers=a)
    trail = c.get("/fhir/AuditEvent", params={"patient": world.alice, "agent": "PlatformA"}, headers=world.ops)
    assert trail.status_code == 200
    events = [e["resource"] for e in trail.json()["entry"]]
    subtypes = {e["subtype"][0]["code"] for e in events}
    assert {"read", "search-type"} <= subtypes
    assert all(e["agent"][0]["name"] == "PlatformA" and e["outcome"] == "0" for e in events)
    failed = c.get("/fhir/AuditEvent", params={"agent": "PlatformA"}, headers=world.ops).json()
    assert any(e["resource"]["outcome"] == "4" for e in failed["entry"])
    today = c.get("/fhir/AuditEvent", params={"date": "ge2000-01-01"}, headers=world.ops).json()
    assert len(today["entry"]) >= len(events)
    assert c.get("/fhir/AuditEvent", headers=a).status_code == 403
    message = c.get("/admin/messages", headers=world.ops).json()["messages"][0]["id"]
    c.get(f"/admin/messages/{message}", headers=world.ops)
    raw = c.get("/fhir/AuditEvent", params={"agent": "ops"}, headers=world.ops).json()
    assert any(e["resource"]["subtype"][0]["code"] == "raw" for e in raw["entry"])


PROTECTED = "PD1" + "|" * 12 + "Y"
UNPROTECTED = "PD1" + "|" * 12 + "N"


def test_a_protected_patient_is_labelled_and_hidden_from_platforms(world: World) -> None:
    c, a = world.client, world.a
    before = len(events(world.runtime, world.sub_a))
    msg = Adt(control_id="P-1", visit="V-9", movement="MVT-9", event_time="20260302080000", extra_segments=[PROTECTED])
    assert world.runtime.pipeline.ingest(msg.bytes(), transport="test").code == "AA"
    patient = c.get(f"/fhir/Patient/{world.alice}", headers=world.ops).json()
    assert patient["meta"]["security"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted"}
    ]
    assert len(events(world.runtime, world.sub_a)) == before  # not announced
    assert c.get(f"/fhir/Patient/{world.alice}", headers=a).status_code == 404
    assert c.get("/fhir/Encounter", headers=a).json()["total"] == 0
    later = Adt(control_id="P-2", trigger="A08", event_time="20260302090000", with_zbe=False)
    assert world.runtime.pipeline.ingest(later.bytes(), transport="test").code == "AA"
    assert c.get(f"/fhir/Patient/{world.alice}", headers=a).status_code == 404  # PD1 absent: label stays
    lifted = Adt(control_id="P-3", trigger="A08", event_time="20260302100000", with_zbe=False)
    lifted.extra_segments = [UNPROTECTED]
    assert world.runtime.pipeline.ingest(lifted.bytes(), transport="test").code == "AA"
    assert "security" not in c.get(f"/fhir/Patient/{world.alice}", headers=a).json()["meta"]


def test_a_notification_sent_is_audited(world: World) -> None:
    with respx.mock(assert_all_mocked=True) as router:
        router.post("http://127.0.0.1:9/hook").mock(return_value=httpx.Response(200))
        asyncio.run(world.runtime.worker.run_once())  # the handshake
        msg = Adt(control_id="N-1", visit="V-7", movement="MVT-7", event_time="20260303080000")
        assert world.runtime.pipeline.ingest(msg.bytes(), transport="test").code == "AA"
        asyncio.run(world.runtime.worker.run_once())
        assert router.calls.call_count >= 2
    trail = world.client.get("/fhir/AuditEvent", params={"patient": world.alice}, headers=world.ops).json()
    sent = [e["resource"] for e in trail["entry"] if e["resource"]["subtype"][0]["code"] == "notify"]
    assert sent and all(e["agent"][0]["who"]["identifier"]["value"] != "operator" for e in sent)


def test_declared_identifier_domains_feed_the_authority_table(world: World) -> None:
    c, rt = world.client, world.runtime
    sender_id, _ = register(rt, "sender", "CHU-Dom", facilities=["CH-TEST"])
    first = Adt(ipp="500005", control_id="D-1", visit="V-51").build().replace(IPP_AUTH, "LOCALDOM")
    assert rt.pipeline.ingest(first.encode(), transport="test").code == "AA"
    seen = c.get("/admin/authorities", headers=world.ops).json()
    assert {"facility": "CH-TEST", "authority": "LOCALDOM"}.items() <= seen["undeclared"][0].items()
    with transaction(rt.db) as conn:
        set_authorities(conn, sender_id, {"LOCALDOM&1.2.3&L": "urn:oid:1.2.250.1.999.7.7"})
    rt.refresh_authorities()
    second = Adt(ipp="600006", control_id="D-2", visit="V-61").build().replace(IPP_AUTH, "LOCALDOM")
    assert rt.pipeline.ingest(second.encode(), transport="test").code == "AA"
    found = c.get("/fhir/Patient", params={"identifier": "urn:oid:1.2.250.1.999.7.7|600006"}, headers=world.ops)
    assert found.json()["total"] == 1
    declared = c.get("/admin/authorities", headers=world.ops).json()["declared"]
    assert {"LOCALDOM&1.2.3&L": "urn:oid:1.2.250.1.999.7.7"} in [d["authorities"] for d in declared]


def test_the_operator_setting_relaxes_confidentiality(world: World) -> None:
    rt, c = world.runtime, world.client
    rt.settings = rt.settings.model_copy(update={"confidential_platform_access": True})
    rt.pipeline.confidential_to_platforms = True
    before = len(events(rt, world.sub_a))
    msg = Adt(control_id="R-1", visit="V-8", movement="MVT-8", event_time="20260302080000", extra_segments=[PROTECTED])
    assert rt.pipeline.ingest(msg.bytes(), transport="test").code == "AA"
    assert len(events(rt, world.sub_a)) == before + 1
    assert c.get(f"/fhir/Patient/{world.alice}", headers=world.a).json()["meta"]["security"][0]["code"] == "R"
    past = c.get(f"/fhir/Subscription/{world.sub_a}/$events", headers=world.a)
    assert past.status_code == 200
    trail = c.get("/fhir/AuditEvent", params={"patient": world.alice}, headers=world.ops).json()
    assert any(e["resource"]["subtype"][0]["code"] == "events" for e in trail["entry"])
