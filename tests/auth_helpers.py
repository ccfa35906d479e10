"""Helpers for tests of #13: register clients straight in the registry and get their tokens over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from gateway.auth.clients import add_client
from gateway.db.engine import transaction
from gateway.runtime import Runtime
from gateway.subscriptions.topics import TOPIC_BASE


def register(runtime: Runtime, kind: str, name: str, **options: Any) -> tuple[str, str | None]:
    """(client_id, secret) of a new client."""
    with transaction(runtime.db) as conn:
        created = add_client(conn, kind=kind, name=name, now=datetime.now(UTC), **options)
    return created.record.id, created.secret


def token(client: TestClient, client_id: str, secret: str | None, *, scope: str | None = None) -> str:
    form = {"grant_type": "client_credentials"}
    if scope is not None:
        form["scope"] = scope
    answer = client.post("/oauth/token", data=form, auth=(client_id, secret or ""))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def login(client: TestClient, runtime: Runtime, kind: str, name: str, **options: Any) -> dict[str, str]:
    """Register a client and return the headers of its bearer token."""
    client_id, secret = register(runtime, kind, name, **options)
    return bearer(token(client, client_id, secret))


BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


def subscription_body(topic: str, criteria: str | None, *, header: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test platform",
        "criteria": f"{TOPIC_BASE}/{topic}",
        "channel": {
            "type": "rest-hook",
            "endpoint": "http://127.0.0.1:9/hook",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": "id-only"}]},
        },
    }
    if criteria:
        body["_criteria"] = {"extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": criteria}]}
    if header:
        body["channel"]["header"] = [header]
    return body


def subscribe_as(client: TestClient, headers: dict[str, str], topic: str, criteria: str | None, **kw: Any) -> str:
    answer = client.post("/fhir/Subscription", json=subscription_body(topic, criteria, **kw), headers=headers)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])
