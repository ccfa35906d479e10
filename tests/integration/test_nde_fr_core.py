"""The resources an NdE CommunicationRequest contains (Patient, Organization, Practitioner) against FR Core
2.1.0 with the shared validator (tests/validation.py), for declarations from the ADT feed and their orders."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient

from gateway.db.repo import ResourceRepo
from gateway.runtime import Runtime
from gateway.subscriptions.nde_order import notification_order
from tests import nde_constraints
from tests.integration.test_nde import declarations, ingest, nde_subscription
from tests.validation import validate


def test_contained_resources_of_declarations_and_orders_meet_fr_core(client: TestClient, runtime: Runtime) -> None:
    sub_id = client.post("/fhir/Subscription", json=nde_subscription()).json()["id"]
    ingest(client, control_id="F1")
    ingest(client, control_id="F2", trigger="A03", movement="MVT-2", event_time="20260305120000")
    found = declarations(client)
    assert len(found) == 2
    with runtime.db.connect() as conn:
        subscription = ResourceRepo(conn).get("Subscription", sub_id)
    assert subscription is not None
    for declaration in found:
        order = notification_order(
            declaration=declaration,
            subscription=subscription.content,
            subscription_url=f"https://gw.example/fhir/Subscription/{sub_id}",
            base_url="https://gw.example/fhir",
            event_number=1,
            emitted_at=datetime.now(UTC),
            medium=runtime.engine.tables.codes["ChannelType_to_Medium"]["rest-hook"].coding(),
        )
        for resource in (declaration, order):
            nde_constraints.check(resource)
            for item in resource["contained"]:
                assert item.get("meta", {}).get("profile"), item["resourceType"]
                assert validate(item) == [], (item["resourceType"], validate(item))
