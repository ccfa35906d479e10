"""Sandbox tenants: a sandbox sender's HTTP and MLLP messages go to the isolated store, never to real data."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.auth.clients import add_client, public_view, rotate_secret
from gateway.config import Settings
from gateway.db.access import ClientRepo
from gateway.db.engine import migrate, transaction
from gateway.db.repo import MessageRepo
from gateway.errors import ConfigError
from gateway.runtime import Runtime
from gateway.web.tenants import parse_senders
from tests.auth_helpers import bearer, login, register, token
from tests.messages import Adt

HL7 = {"Content-Type": "application/hl7-v2"}


@pytest.fixture
def tenant_runtime(settings: Settings, tmp_path: Path) -> Iterator[Runtime]:
    settings = settings.model_copy(
        update={"sandbox_database_url": f"sqlite:///{tmp_path / 'sandbox.db'}", "sandbox_senders": ["GAM-SBX|CH-SBX"]}
    )
    runtime = Runtime.build(settings, run_migrations=False)
    assert runtime.sandbox is not None
    migrate(runtime.sandbox.db)  # the main store was migrated by its fixture, the sandbox store is new
    yield runtime
    runtime.close()


def test_sandbox_senders_go_to_the_isolated_store(tenant_runtime: Runtime) -> None:
    with TestClient(create_app(tenant_runtime, start_services=False)) as client:
        sandboxed = Adt(control_id="T1", sender="GAM-SBX", facility="CH-SBX", ipp="9001").bytes()
        assert client.post("/hl7v2", content=sandboxed, headers=HL7).headers["X-Ack-Code"] == "AA"
        ack = asyncio.run(
            tenant_runtime.ingest(Adt(control_id="T2", sender="GAM-SBX", facility="CH-SBX").bytes(), transport="mllp")
        )
        assert b"MSA|AA|T2" in ack
        real = Adt(control_id="R1", ipp="9002").bytes()
        assert client.post("/hl7v2", content=real, headers=HL7).headers["X-Ack-Code"] == "AA"

        journal = client.get("/admin/messages").json()["messages"]
        assert [m["control_id"] for m in journal] == ["R1"]
        assert client.get("/fhir/Patient", params={"identifier": "9001"}).json()["total"] == 0
        store = client.get("/sandbox/store/messages").json()
        assert store["senders"] == ["GAM-SBX|CH-SBX"]
        assert [(m["control_id"], m["transport"], m["outcome"]) for m in store["messages"]] == [
            ("T2", "mllp", "AA"),
            ("T1", "http", "AA"),
        ]
        one = client.get(f"/sandbox/store/messages/{store['messages'][1]['id']}").json()
        assert one["raw"].startswith("MSH|") and "MSA|AA|T1" in one["ack"]
        assert "Messages from sandbox senders" in client.get("/sandbox").text


def test_without_a_sandbox_store_the_store_routes_say_so(client: TestClient) -> None:
    assert client.get("/sandbox/store/messages").status_code == 404
    assert "Messages from sandbox senders" not in client.get("/sandbox").text


def test_a_sender_without_facility_matches_every_facility() -> None:
    assert parse_senders(["GAM-A", "GAM-B|CH-B"]) == {("GAM-A", "*"), ("GAM-B", "CH-B")}


def test_registry_sandbox_senders_go_to_the_isolated_store_and_see_only_their_own(tenant_runtime: Runtime) -> None:
    runtime = tenant_runtime
    with TestClient(create_app(runtime, start_services=False)) as client:
        ops = login(client, runtime, "operator", "ops")
        real_id, _ = register(runtime, "sender", "real-engine", facilities=["CH-REAL"])
        tenant_id, tenant_secret = register(runtime, "sender", "trial-engine", facilities=["CH-TRIAL"], sandbox=True)
        other_id, other_secret = register(runtime, "sender", "trial-two", facilities=["CH-TRIAL2"], sandbox=True)
        with transaction(runtime.db) as conn:
            listed = {c.id: public_view(c) for c in ClientRepo(conn).list()}
            with pytest.raises(ConfigError, match="real sender"):
                add_client(conn, kind="sender", name="x", now=datetime.now(UTC), facilities=["CH-REAL"], sandbox=True)
            with pytest.raises(ConfigError, match="marks a sender"):
                add_client(conn, kind="platform", name="y", now=datetime.now(UTC), sandbox=True)
        assert listed[tenant_id]["sandbox"] is True and listed[real_id]["sandbox"] is False
        assert {"gateway/sandbox", "gateway/sandbox-tenant"} <= set(listed[tenant_id]["scope"].split())
        runtime.refresh_authorities()
        assert runtime.sandbox is not None and runtime.sandbox.tenant_facilities == {"CH-TRIAL", "CH-TRIAL2"}

        tenant = bearer(token(client, tenant_id, tenant_secret))
        other = bearer(token(client, other_id, other_secret))
        sent = Adt(control_id="RT1", sender="ENGINE", facility="CH-TRIAL", ipp="9101").bytes()
        assert client.post("/hl7v2", content=sent, headers={**HL7, **tenant}).headers["X-Ack-Code"] == "AA"
        # a token asked with fewer scopes still sends to the sandbox: tenancy is the registry's, not the token's
        narrow = bearer(token(client, tenant_id, tenant_secret, scope="system/CommunicationRequest.c"))
        sent = Adt(control_id="RT2", sender="ENGINE", facility="CH-TRIAL", ipp="9102").bytes()
        assert client.post("/hl7v2", content=sent, headers={**HL7, **narrow}).headers["X-Ack-Code"] == "AA"
        over_mllp = Adt(control_id="RT3", sender="ENGINE", facility="CH-TRIAL2", ipp="9103").bytes()
        assert b"MSA|AA|RT3" in asyncio.run(runtime.ingest(over_mllp, transport="mllp"))

        assert client.get("/admin/messages", headers=ops).json()["messages"] == []  # nothing in the real store
        assert client.get("/fhir/Patient", params={"identifier": "9101"}, headers=ops).json()["total"] == 0
        mine = client.get("/sandbox/store/messages", headers=tenant).json()
        assert [m["control_id"] for m in mine["messages"]] == ["RT2", "RT1"] and mine["senders"] == ["*|CH-TRIAL"]
        theirs = client.get("/sandbox/store/messages", headers=other).json()["messages"]
        assert [m["control_id"] for m in theirs] == ["RT3"]
        assert client.get(f"/sandbox/store/messages/{mine['messages'][0]['id']}", headers=other).status_code == 404
        everything = client.get("/sandbox/store/messages", headers=ops).json()["messages"]
        assert [m["control_id"] for m in everything] == ["RT3", "RT2", "RT1"]
        real = bearer(token(client, real_id, _secret_of(runtime, real_id)))
        assert client.get("/sandbox/store/messages", headers=real).status_code == 403  # no gateway/sandbox scope


def _secret_of(runtime: Runtime, client_id: str) -> str:
    with transaction(runtime.db) as conn:
        return rotate_secret(conn, client_id, now=datetime.now(UTC))


def test_a_sandbox_sender_without_a_sandbox_store_is_refused_not_stored(client: TestClient, runtime: Runtime) -> None:
    tenant_id, secret = register(runtime, "sender", "trial-engine", facilities=["CH-TRIAL"], sandbox=True)
    headers = {**HL7, **bearer(token(client, tenant_id, secret))}
    answer = client.post("/hl7v2", content=Adt(facility="CH-TRIAL").bytes(), headers=headers)
    assert answer.status_code == 503 and "sandbox store" in answer.text
    with runtime.db.connect() as conn:
        assert MessageRepo(conn).list() == []
