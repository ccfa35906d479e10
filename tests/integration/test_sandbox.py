"""The sandbox runs a whole stay on a throw-away store and keeps nothing."""

from fastapi.testclient import TestClient

from gateway.api.sandbox import split_messages
from tests.messages import Adt


def test_a_stay_in_the_sandbox_shows_acks_and_resources_and_stores_nothing(client: TestClient) -> None:
    admission = Adt(control_id="S1").bytes()
    discharge = Adt(trigger="A03", control_id="S2", movement="MVT-2", event_time="20260305120000").bytes()
    answer = client.post(
        "/sandbox/convert", content=admission + b"\r\n\r\n" + discharge, headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert [m["code"] for m in body["messages"]] == ["AA", "AA"]
    stays = [
        e["resource"]
        for e in body["bundle"]["entry"]
        if e["resource"]["resourceType"] == "Encounter" and "partOf" not in e["resource"]
    ]
    assert [s["status"] for s in stays] == ["finished"]
    assert client.get("/fhir/Encounter", params={"identifier": "V-5001"}).json()["total"] == 0
    assert client.get("/admin/messages").json()["counts"] == {}


def test_bad_messages_get_their_ack_in_the_sandbox(client: TestClient) -> None:
    answer = client.post("/sandbox/convert", content=b"\x0bnot hl7\x1c\r", headers={"Content-Type": "text/plain"})
    assert answer.json()["messages"][0]["code"] == "AR"


def test_split_accepts_frames_and_blank_lines() -> None:
    assert split_messages(b"\x0bMSH|a\rPID|1\x1c\r\x0bMSH|b\x1c\r") == [b"MSH|a\rPID|1", b"MSH|b"]
    assert split_messages(b"MSH|a\rPID|1\r\n\r\nMSH|b\n") == [b"MSH|a\rPID|1", b"MSH|b"]
