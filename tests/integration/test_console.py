"""The operator console's queries and pages (SQLite and PostgreSQL): filters, paging, replay, resend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.db.console import MessageFilter, find_messages, subscription_lines
from gateway.runtime import Runtime
from tests.api_helpers import subscribe
from tests.auth_helpers import login, subscribe_as
from tests.messages import Adt

HL7 = {"Content-Type": "application/hl7-v2"}


def _feed(client: TestClient) -> None:
    client.post("/hl7v2", content=Adt(control_id="C1", ipp="4001").bytes(), headers=HL7)
    client.post("/hl7v2", content=Adt(control_id="C2", ipp="4002", sender="GAM-B").bytes(), headers=HL7)
    client.post("/hl7v2", content=Adt(control_id="C3", ipp="4001", trigger="A03", movement="M3").bytes(), headers=HL7)
    client.post("/hl7v2", content=b"MSH|^~\\&|GAM-TEST|CH-TEST|G|A|20260301||ADT^A99|C4|P|2.5\rPID|1\r", headers=HL7)


def _ids(runtime: Runtime, where: MessageFilter, *, limit: int = 50, before_id: int | None = None) -> list[str]:
    with runtime.db.connect() as conn:
        return [m.control_id for m in find_messages(conn, where, limit=limit, before_id=before_id)]


def test_the_journal_filters_combine(client: TestClient, runtime: Runtime) -> None:
    _feed(client)
    assert _ids(runtime, MessageFilter()) == ["C4", "C3", "C2", "C1"]
    assert _ids(runtime, MessageFilter(outcome="AR")) == ["C4"]
    assert _ids(runtime, MessageFilter(sender="GAM-B")) == ["C2"]
    assert _ids(runtime, MessageFilter(sender="CH-TEST", trigger="A01")) == ["C2", "C1"]
    assert _ids(runtime, MessageFilter(control_id="C3")) == ["C3"]
    assert _ids(runtime, MessageFilter(ipp="4001")) == ["C3", "C1"]
    assert _ids(runtime, MessageFilter(ipp="4001", trigger="A03")) == ["C3"]
    now = datetime.now(UTC)
    assert _ids(runtime, MessageFilter(received_from=now + timedelta(days=1))) == []
    assert _ids(runtime, MessageFilter(received_from=now - timedelta(days=1), received_to=now + timedelta(days=1))) == [
        "C4",
        "C3",
        "C2",
        "C1",
    ]
    first = _ids(runtime, MessageFilter(), limit=2)
    with runtime.db.connect() as conn:
        last_id = find_messages(conn, MessageFilter(), limit=2, before_id=None)[-1].id
    assert first + _ids(runtime, MessageFilter(), limit=2, before_id=last_id) == ["C4", "C3", "C2", "C1"]


def test_the_messages_page_filters_pages_and_replays(client: TestClient) -> None:
    _feed(client)
    page = client.get("/console/messages", params={"outcome": "AR"})
    assert page.status_code == 200
    assert "C4" in page.text and "C1" not in page.text
    paged = client.get("/console/messages", params={"ipp": "4001"}).text
    assert "C3" in paged and "C1" in paged and "C2" not in paged
    assert client.get("/console/messages", params={"from": "not-a-date"}).status_code == 200

    listed = client.get("/admin/messages", params={"limit": 10}).json()["messages"]
    discharge = next(m for m in listed if m["control_id"] == "C3")
    detail = client.get(f"/console/messages/{discharge['id']}")
    assert "MSA|AA|C3" in detail.text and "Encounter/" in detail.text and ">Replay</button>" in detail.text
    replayed = client.post(f"/console/messages/{discharge['id']}/replay", follow_redirects=False)
    assert replayed.status_code == 303
    assert replayed.headers["location"] == f"/console/messages/{discharge['id']}?replayed=AA"
    assert client.get("/console/messages/999999").status_code == 404


def test_subscriptions_show_their_backlog_and_can_be_resent(client: TestClient, runtime: Runtime) -> None:
    sub_id = subscribe(client, "encounter-start", "Encounter?patient.identifier=4001")
    _feed(client)
    with runtime.db.connect() as conn:
        [line] = subscription_lines(conn)
    assert line.id == sub_id
    assert line.backlog >= 2  # the handshake and the admission, nothing delivered (no worker)
    assert line.next_retry is not None
    page = client.get("/console/subscriptions")
    assert sub_id in page.text and "encounter-start" in page.text
    resent = client.post(f"/console/subscriptions/{sub_id}/resend", follow_redirects=False)
    assert resent.status_code == 303


def test_the_subscriptions_page_names_each_owner(client: TestClient, runtime: Runtime) -> None:
    ops = login(client, runtime, "operator", "ops")
    platform = login(client, runtime, "platform", "Parceo")
    mine = subscribe_as(client, platform, "encounter-start", "Encounter?patient.identifier=urn:oid:1.2|4001")
    theirs = subscribe_as(client, ops, "encounter-end", "Encounter?patient.identifier=urn:oid:1.2|4002")
    with runtime.db.connect() as conn:
        owners = {line.id: line.owner for line in subscription_lines(conn)}
    assert owners == {mine: "Parceo", theirs: ""}
    page = client.get("/console/subscriptions", headers=ops).text
    assert "<td>Parceo</td>" in page


def test_the_console_is_behind_the_api_token(runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"api_token": "s3cret"})
    runtime.gate.settings = runtime.settings  # the authorization edge reads the token from its own copy
    with TestClient(create_app(runtime, start_services=False)) as client:
        for path in ("/console/messages", "/console/subscriptions", "/console/live", "/console/live/data"):
            assert client.get(path).status_code == 401, path
        assert client.post("/console/messages/1/replay").status_code == 401
        ok = client.get("/console/messages", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/sandbox").status_code == 200  # the sandbox page stays open (see README)


def test_the_live_data_lists_the_registry_figures(client: TestClient) -> None:
    data = client.get("/console/live/data").json()
    assert "gateway_messages" in {s["name"] for s in data["series"]}


def test_the_message_page_marks_the_fields_its_ack_points_at(client: TestClient) -> None:
    client.post("/hl7v2", content=Adt(control_id="E1", visit="").bytes(), headers=HL7)
    [message] = client.get("/admin/messages").json()["messages"]
    assert message["outcome"] == "AE"
    page = client.get(f"/console/messages/{message['id']}").text
    assert '<mark class="field" title="PV1-19: PV1-19 (visit number)' in page
