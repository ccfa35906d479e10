"""Helpers for tests that drive the HTTP API: subscribing a test platform, reading its queued events."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient

from gateway.db.engine import transaction
from gateway.db.repo import OutboxRecord, OutboxRepo
from gateway.db.schema import metadata
from gateway.runtime import Runtime
from gateway.subscriptions.topics import TOPIC_BASE
from tests.validation import validate

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


#: Resource types the gateway produces from the feeds: each must claim its FR Core / CDS profile.
PRODUCED = frozenset({"Patient", "Encounter", "CareTeam", "Practitioner", "PractitionerRole", "Organization"})


def produced_resources(body: Any) -> list[JSON]:
    """The produced resources of a FHIR answer: the resource itself, or a Bundle's entries."""
    if not isinstance(body, dict):
        return []
    if body.get("resourceType") == "Bundle":
        return [r for e in body.get("entry", []) for r in produced_resources(e.get("resource"))]
    return [body] if body.get("resourceType") in PRODUCED else []


def profile_errors(answer: httpx.Response) -> list[str]:
    """Every profile error of the resources in a successful FHIR JSON answer."""
    if answer.status_code >= 300 or "json" not in answer.headers.get("content-type", "") or not answer.content:
        return []  # errors, other formats, and HEAD answers (headers without a body) hold no resource
    out = []
    for resource in produced_resources(answer.json()):
        where = f"{resource.get('resourceType')}/{resource.get('id')}"
        if not (resource.get("meta") or {}).get("profile"):
            out.append(f"{where}: claims no profile")
        out += [f"{where}: {e}" for e in validate(resource)]
    return out


class ValidatingClient(TestClient):
    """A TestClient that checks every API answer against the profiles its resources claim (0 errors)."""

    def request(self, method: str, url: httpx._types.URLTypes, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        answer = super().request(method, url, **kwargs)
        errors = profile_errors(answer)
        assert not errors, f"{method} {url} answered resources that do not conform:\n  " + "\n  ".join(errors)
        return answer
