"""What real GAM feeds send that a golden stay cannot hold (fixtures/feeds, our own messages).

Each case's outcome depends on what the gateway already holds, hence an integration test over the HTTP
API on SQLite and PostgreSQL, rather than a golden whose every arrival order must be accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

JSON = dict[str, Any]
FEEDS = Path(__file__).resolve().parent.parent.parent / "fixtures" / "feeds"
HL7 = {"Content-Type": "application/hl7-v2"}
IPP_SYSTEM = "urn:oid:1.2.250.1.999.7.1"


def send(client: TestClient, path: Path) -> tuple[str, str]:
    answer = client.post("/hl7v2", content=path.read_bytes(), headers=HL7)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-ack-code"], answer.text


def patient_id(client: TestClient, ipp: str) -> str:
    found = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|{ipp}"}).json()
    assert found["total"] == 1, found
    return str(found["entry"][0]["resource"]["id"])


def stays_of(client: TestClient, pid: str) -> list[JSON]:
    found = client.get("/fhir/Encounter", params={"patient": f"Patient/{pid}"}).json()
    return [e["resource"] for e in found.get("entry", []) if "partOf" not in e["resource"]]


def circle_members(client: TestClient, pid: str) -> list[str]:
    (team,) = client.get("/fhir/CareTeam", params={"patient": f"Patient/{pid}"}).json()["entry"]
    return sorted(p["member"]["reference"] for p in team["resource"].get("participant", []))


def test_a44_without_pv1_moves_the_account_named_by_mrg3(client: TestClient) -> None:
    admission, move = sorted((FEEDS / "a44_without_pv1").glob("*.hl7"))
    assert send(client, admission)[0] == "AA"
    wrong = patient_id(client, "880101")
    (stay,) = stays_of(client, wrong)
    assert any(i["type"]["coding"][0]["code"] == "AN" and i["value"] == "880901" for i in stay["identifier"])
    members = circle_members(client, wrong)
    assert members  # the stay's doctor and unit

    code, ack = send(client, move)
    assert code == "AA", ack
    right = patient_id(client, "880102")
    assert stays_of(client, wrong) == []
    (moved,) = stays_of(client, right)
    assert moved["id"] == stay["id"] and moved["subject"] == {"reference": f"Patient/{right}"}
    movements = client.get("/fhir/Encounter", params={"part-of": f"Encounter/{stay['id']}"}).json()["entry"]
    assert {m["resource"]["subject"]["reference"] for m in movements} == {f"Patient/{right}"}
    # the stay's members follow it into the right patient's circle
    assert circle_members(client, right) == members
    assert circle_members(client, wrong) == []


def test_a44_before_its_stay_is_refused_then_replayed(client: TestClient) -> None:
    """An account not received yet cannot move: AE with the reason, the raw message kept; replayed once
    the stay has arrived, it moves it."""
    admission, move = sorted((FEEDS / "a44_without_pv1").glob("*.hl7"))
    code, ack = send(client, move)
    assert code == "AE"
    assert "no stay holds the account" in ack and "|101^" in ack
    journal = client.get("/admin/messages", params={"outcome": "AE"}).json()
    assert journal["counts"] == {"AE": 1}
    assert send(client, admission)[0] == "AA"
    replayed = client.post(f"/admin/messages/{journal['messages'][0]['id']}/replay").json()
    assert replayed["code"] == "AA", replayed
    assert stays_of(client, patient_id(client, "880101")) == []
    assert len(stays_of(client, patient_id(client, "880102"))) == 1
