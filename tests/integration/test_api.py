"""HTTP API on a real store: ingest transport rules, FHIR read/search/history, subscriptions, admin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.basic import Basic
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.subscription import Subscription

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.fhir.capability import TOPIC_CANONICAL_EXT
from gateway.hl7 import er7
from gateway.runtime import Runtime
from gateway.subscriptions.service import SIGNING_SECRET
from gateway.subscriptions.topics import TOPIC_BASE
from tests.messages import IPP_SYSTEM, VISIT_SYSTEM, Adt

HL7 = {"Content-Type": "application/hl7-v2"}


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.build(settings.model_copy(update={"max_message_bytes": 4096}))
    yield rt
    rt.close()


def ack_code(body: bytes) -> str:
    seg = er7.parse(body).segment("MSA")
    assert seg is not None
    return seg.get(1)


@pytest.mark.parametrize(
    "media",
    ["application/hl7-v2", "text/plain", "x-application/hl7-v2+er7", "application/hl7-v2; charset=utf-8"],
)
def test_ingest_accepts_the_hl7_media_types(client: TestClient, media: str) -> None:
    answer = client.post("/hl7v2", content=Adt().bytes(), headers={"Content-Type": media})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/hl7-v2")
    assert ack_code(answer.content) == "AA"


def test_ingest_answers_200_with_the_ack_whatever_its_code(client: TestClient) -> None:
    answer = client.post("/hl7v2", content=b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.5\r", headers=HL7)
    assert answer.status_code == 200 and ack_code(answer.content) == "AR"
    assert answer.headers["x-ack-code"] == "AR"


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"", HL7, 400),
        (b" \r\n", HL7, 400),
        (Adt().bytes(), {"Content-Type": "application/json"}, 415),
        (b"MSH|" + b"x" * 5000, HL7, 413),
    ],
    ids=["empty", "blank", "wrong-type", "too-large"],
)
def test_ingest_transport_errors_are_4xx(client: TestClient, body: bytes, headers: dict[str, str], status: int) -> None:
    assert client.post("/hl7v2", content=body, headers=headers).status_code == status


def test_capability_statement_is_valid_r4_and_lists_the_topics(client: TestClient) -> None:
    answer = client.get("/fhir/metadata")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/fhir+json"
    body = answer.json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1"
    # Backport IG: the extension's context is CapabilityStatement.rest.resource (the Subscription entry)
    (subscription,) = [r for r in body["rest"][0]["resource"] if r["type"] == "Subscription"]
    canonicals = {e["valueCanonical"] for e in subscription["extension"] if e["url"] == TOPIC_CANONICAL_EXT}
    assert {f"{TOPIC_BASE}/encounter-start", f"{TOPIC_BASE}/encounter-end"} <= canonicals
    assert "extension" not in body["rest"][0]


def test_capability_statement_names_fr_core_and_cds(client: TestClient) -> None:
    """The French guides every produced resource conforms to, with their versions."""
    guides = client.get("/fhir/metadata").json()["implementationGuide"]
    assert "https://hl7.fr/ig/fhir/core/ImplementationGuide/hl7.fhir.fr.core|2.1.0" in guides
    assert "https://interop.esante.gouv.fr/ig/fhir/cds/ImplementationGuide/ans.fhir.fr.cds|2.0.1" in guides


def test_read_search_history_after_ingest(client: TestClient) -> None:
    client.post("/hl7v2", content=Adt(control_id="M1").bytes(), headers=HL7)
    client.post(
        "/hl7v2",
        content=Adt(trigger="A03", control_id="M2", movement="MVT-2", event_time="20260305120000").bytes(),
        headers=HL7,
    )

    patients = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|100001"}).json()
    Bundle.model_validate(patients)
    assert patients["type"] == "searchset" and patients["total"] == 1
    patient_id = patients["entry"][0]["resource"]["id"]
    assert client.get("/fhir/Patient", params={"identifier": "100001"}).json()["total"] == 1
    assert client.get("/fhir/Patient", params={"identifier": "urn:oid:9.9|100001"}).json()["total"] == 0

    by_patient = client.get("/fhir/Encounter", params={"patient": f"Patient/{patient_id}"}).json()
    stays = [e["resource"] for e in by_patient["entry"] if "partOf" not in e["resource"]]
    assert len(stays) == 1
    encounter = stays[0]
    movements = client.get("/fhir/Encounter", params={"part-of": f"Encounter/{encounter['id']}"}).json()
    assert movements["total"] == 2 and by_patient["total"] == 3  # the stay and its two movements
    assert encounter["status"] == "finished"
    assert client.get("/fhir/Encounter", params={"identifier": f"{VISIT_SYSTEM}|V-5001"}).json()["total"] == 1

    read = client.get(f"/fhir/Encounter/{encounter['id']}")
    assert read.status_code == 200 and read.headers["etag"] == 'W/"2"'
    first = client.get(f"/fhir/Encounter/{encounter['id']}/_history/1").json()
    assert first["status"] == "in-progress" and first["meta"]["versionId"] == "1"
    history = client.get(f"/fhir/Encounter/{encounter['id']}/_history").json()
    Bundle.model_validate(history)
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/fhir/Patient/does-not-exist", 404, "not-found"),
        ("/fhir/Observation/1", 404, "not-supported"),
        ("/fhir/Patient?name=x", 400, "not-supported"),
        ("/fhir/Patient?_count=abc", 400, "invalid"),
        ("/fhir/Encounter/x/_history/abc", 404, "not-found"),
        ("/fhir/nothing/here/at/all/really", 404, "not-found"),
    ],
)
def test_fhir_errors_are_operation_outcomes(client: TestClient, path: str, status: int, code: str) -> None:
    answer = client.get(path)
    assert answer.status_code == status
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code


def subscription(topic: str = "encounter-start", endpoint: str = "http://127.0.0.1:9999/hook") -> dict:
    backport = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": f"{TOPIC_BASE}/{topic}",
        "_criteria": {
            "extension": [
                {
                    "url": f"{backport}/backport-filter-criteria",
                    "valueString": f"Encounter?patient.identifier={IPP_SYSTEM}|100001",
                }
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{backport}/backport-payload-content", "valueCode": "id-only"}]},
            "header": ["Authorization: Bearer x"],
        },
    }


def test_subscription_create_read_and_status(client: TestClient) -> None:
    created = client.post("/fhir/Subscription", json=subscription())
    assert created.status_code == 201
    body = created.json()
    Subscription.model_validate(body)
    assert body["status"] == "requested" and created.headers["location"].endswith("/_history/1")
    secrets = [e["valueString"] for e in body["channel"]["extension"] if e["url"] == SIGNING_SECRET]
    assert len(secrets) == 1 and len(secrets[0]) >= 32

    read = client.get(f"/fhir/Subscription/{body['id']}").json()
    assert SIGNING_SECRET not in str(read)  # the secret is shown once, at creation
    status = client.get(f"/fhir/Subscription/{body['id']}/$status").json()
    params = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert params["status"]["valueCode"] == "requested" and params["type"]["valueCode"] == "query-status"
    assert client.get("/fhir/Subscription", params={"status": "requested"}).json()["total"] == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (subscription(topic="no-such-topic"), "not-supported"),
        (subscription(endpoint="http://hooks.example.org/x"), "security"),
        (subscription(endpoint="https://10.0.0.8/x"), "security"),
        ({"resourceType": "Patient"}, "invalid"),
        ({**subscription(), "status": 12}, "structure"),
    ],
    ids=["unknown-topic", "plain-http", "private-address", "not-a-subscription", "malformed"],
)
def test_subscription_refusals(client: TestClient, body: dict, code: str) -> None:
    answer = client.post("/fhir/Subscription", json=body)
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["code"] == code


def test_subscription_with_unknown_filter_or_bad_json(client: TestClient) -> None:
    body = subscription()
    body["_criteria"]["extension"][0]["valueString"] = "Encounter?name=x"
    assert client.post("/fhir/Subscription", json=body).status_code == 400
    answer = client.post("/fhir/Subscription", content=b"{not json", headers={"Content-Type": "application/fhir+json"})
    assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome"


def test_bearer_token_guards_fhir_and_admin_but_not_ingest(settings: Settings) -> None:
    """With no client registered, the API token still guards FHIR and admin; metadata is open (#13)."""
    rt = Runtime.build(settings.model_copy(update={"api_token": "s3cret"}))
    with TestClient(create_app(rt, start_services=False)) as c:
        assert c.get("/fhir/metadata").status_code == 200
        assert c.get("/fhir/Patient").status_code == 401
        assert c.get("/admin/messages").status_code == 401
        assert c.get("/fhir/Patient", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/hl7v2", content=Adt().bytes(), headers=HL7).status_code == 200
    rt.close()


def test_admin_journal_and_replay(client: TestClient) -> None:
    client.post("/hl7v2", content=Adt(visit="").bytes(), headers=HL7)  # AE: no visit number
    journal = client.get("/admin/messages", params={"outcome": "AE"}).json()
    assert journal["counts"] == {"AE": 1}
    entry = journal["messages"][0]
    assert entry["error_code"] == "101" and "raw" not in entry
    detail = client.get(f"/admin/messages/{entry['id']}").json()
    assert detail["raw"].startswith("MSH|")
    replayed = client.post(f"/admin/messages/{entry['id']}/replay").json()
    assert replayed["code"] == "AE"
    assert client.post("/admin/messages/999999/replay").status_code == 404
    assert client.get("/health").json() == {"status": "ok"}
    assert "gateway_messages_total" in client.get("/metrics").text


def test_topics_are_readable_as_backport_basic_resources(client: TestClient) -> None:
    listing = client.get("/fhir/Basic").json()
    assert listing["total"] >= 6
    urls = set()
    for entry in listing["entry"]:
        Basic.model_validate(entry["resource"])
        urls |= {e["valueUri"] for e in entry["resource"]["extension"] if e["url"].endswith("SubscriptionTopic.url")}
    metadata = client.get("/fhir/metadata").json()
    (subscription,) = [r for r in metadata["rest"][0]["resource"] if r["type"] == "Subscription"]
    advertised = {e["valueCanonical"] for e in subscription["extension"] if e["url"] == TOPIC_CANONICAL_EXT}
    assert urls == advertised
    one = client.get("/fhir/Basic/encounter-start").json()
    assert one["code"]["coding"][0]["code"] == "SubscriptionTopic"
    assert client.get("/fhir/Basic", params={"url": f"{TOPIC_BASE}/encounter-end"}).json()["total"] == 1
    assert client.get("/fhir/Basic/nope").status_code == 404
