"""Sandbox tenants: a sandbox sender's HTTP and MLLP messages go to the isolated store, never to real data."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.db.engine import migrate
from gateway.runtime import Runtime
from gateway.web.tenants import parse_senders
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
