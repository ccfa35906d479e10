"""Helpers for tests that drive the HTTP API: subscribing a test platform, reading its queued events."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from gateway.db.engine import transaction
from gateway.db.repo import OutboxRecord, OutboxRepo
from gateway.db.schema import metadata
from gateway.runtime import Runtime
from gateway.subscriptions.topics import TOPIC_BASE

JSON = dict[str, Any]
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


def subscribe(client: TestClient, topic: str, criteria: str, *, reason: str = "test platform") -> str:
    """An id-only rest-hook subscription to ``topic`` with ``criteria``; returns its id."""
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": reason,
        "criteria": f"{TOPIC_BASE}/{topic}",
        "_criteria": {"extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": criteria}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": "http://127.0.0.1:9/hook",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": "id-only"}]},
        },
    }
    answer = client.post("/fhir/Subscription", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def events(runtime: Runtime, sub_id: str) -> list[OutboxRecord]:
    """The event notifications queued for a subscription (handshakes and heartbeats left out)."""
    with runtime.db.connect() as conn:
        found = OutboxRepo(conn).for_subscription(sub_id)
    return [r for r in found if r.notification_type == "event-notification"]


def empty_store(runtime: Runtime) -> None:
    """Empty every table, to replay the same messages in another order on the same store."""
    with transaction(runtime.db) as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def without_meta_versions(resource: JSON) -> JSON:
    """A resource without meta.versionId/lastUpdated, which depend on the arrival order and the clock."""
    meta = {k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    return {**resource, "meta": meta}
