"""Subscription use cases: create (R4 + Backport IG shape), read status; the table and the resource agree."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fhir.resources.R4B.subscription import Subscription as SubscriptionModel
from pydantic import ValidationError
from sqlalchemy import Connection

from gateway.db.indexing import search_entries
from gateway.db.repo import OutboxRepo, ResourceRepo, StoredResource, SubscriptionRecord, SubscriptionRepo
from gateway.errors import FhirError
from gateway.fhir.canonical import CANONICAL_BASE
from gateway.subscriptions.endpoints import check_endpoint
from gateway.subscriptions.matching import parse_criteria
from gateway.subscriptions.topics import BY_URL

JSON = dict[str, Any]
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
#: Our extension on ``Subscription.channel``: the HMAC-SHA256 key for the body signature. A platform
#: may send its own; otherwise one is generated and returned once, in the create response only.
SIGNING_SECRET = f"{CANONICAL_BASE}/StructureDefinition/subscription-signing-secret"
CHANNEL_TYPES = frozenset({"rest-hook"})
PAYLOAD_CONTENTS = frozenset({"empty", "id-only", "full-resource"})
Resolver = Callable[..., Any]


def _extensions(element: JSON | None, url: str) -> list[JSON]:
    return [e for e in (element or {}).get("extension", []) if e.get("url") == url]


def parse_subscription(body: JSON, *, allowlist: list[str], resolver: Resolver | None = None) -> dict[str, Any]:
    """Check a submitted Subscription; return what the gateway keeps of it. Errors are 4xx FhirErrors."""
    if body.get("resourceType") != "Subscription":
        raise FhirError("the body must be a Subscription resource", issue_code="invalid")
    try:
        SubscriptionModel.model_validate({k: v for k, v in body.items() if k not in ("id", "meta")})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise FhirError(f"invalid Subscription: {where}: {first.get('msg')}", issue_code="structure") from exc
    topic = BY_URL.get(str(body.get("criteria", "")))
    if topic is None:
        known = ", ".join(sorted(BY_URL))
        raise FhirError(f"criteria must be a topic canonical URL; known topics: {known}", issue_code="not-supported")
    filters = []
    for ext in _extensions(body.get("_criteria"), FILTER_CRITERIA):
        filters += [f.as_json() for f in parse_criteria(str(ext.get("valueString", "")), resource=topic.resource)]
    channel = body.get("channel") or {}
    if channel.get("type") not in CHANNEL_TYPES:
        raise FhirError(f"channel.type must be one of {sorted(CHANNEL_TYPES)}", issue_code="not-supported")
    if channel.get("payload", "application/fhir+json") not in ("application/fhir+json", "application/json"):
        raise FhirError("channel.payload must be application/fhir+json", issue_code="not-supported")
    content = next((str(e.get("valueCode")) for e in _extensions(channel.get("_payload"), PAYLOAD_CONTENT)), "id-only")
    if content not in PAYLOAD_CONTENTS:
        raise FhirError(f"payload content must be one of {sorted(PAYLOAD_CONTENTS)}", issue_code="value")
    endpoint = str(channel.get("endpoint") or "")
    kwargs = {"resolver": resolver} if resolver else {}
    refusal = check_endpoint(endpoint, allowlist=allowlist, **kwargs)
    if refusal:
        raise FhirError(f"channel.endpoint refused: {refusal}", issue_code="security")
    secret = next((str(e.get("valueString")) for e in _extensions(channel, SIGNING_SECRET)), "")
    return {
        "topic": topic.url,
        "filters": filters,
        "endpoint": endpoint,
        "channel_type": str(channel["type"]),
        "payload_content": content,
        "headers": [str(h) for h in channel.get("header", [])],
        "secret": secret or secrets.token_urlsafe(32),
        "secret_generated": not secret,
    }


def create_subscription(
    conn: Connection, body: JSON, *, allowlist: list[str], now: datetime, resolver: Resolver | None = None
) -> tuple[StoredResource, str | None]:
    """Store a new subscription as ``requested`` and queue its handshake; returns (resource, new secret)."""
    parsed = parse_subscription(body, allowlist=allowlist, resolver=resolver)
    sub_id = uuid.uuid4().hex
    record = SubscriptionRecord(
        id=sub_id,
        status="requested",
        topic=parsed["topic"],
        endpoint=parsed["endpoint"],
        channel_type=parsed["channel_type"],
        payload_content=parsed["payload_content"],
        headers=parsed["headers"],
        filters=parsed["filters"],
        secret=parsed["secret"],
        events_since_start=0,
        error=None,
        created_at=now,
    )
    SubscriptionRepo(conn).add(record)
    resource = _public_resource(body, sub_id=sub_id, status="requested", error=None)
    stored, _ = ResourceRepo(conn).put(resource, now=now, index=search_entries(resource))
    OutboxRepo(conn).add(
        subscription_id=sub_id,
        event_number=0,
        notification_type="handshake",
        topic=record.topic,
        occurred_at=now,
    )
    return stored, parsed["secret"] if parsed["secret_generated"] else None


def _public_resource(body: JSON, *, sub_id: str, status: str, error: str | None) -> JSON:
    """The Subscription as readable through FHIR: our status, and never the signing secret."""
    resource = {k: v for k, v in body.items() if k not in ("meta", "text")}
    resource["id"] = sub_id
    resource["status"] = status
    channel = dict(resource.get("channel") or {})
    channel["extension"] = [e for e in channel.get("extension", []) if e.get("url") != SIGNING_SECRET]
    if not channel["extension"]:
        channel.pop("extension")
    resource["channel"] = channel
    if error:
        resource["error"] = error
    else:
        resource.pop("error", None)
    return resource


def set_status(conn: Connection, sub_id: str, status: str, *, now: datetime, error: str | None = None) -> None:
    """Move a subscription to ``status`` in the table and in a new version of its resource."""
    SubscriptionRepo(conn).set_status(sub_id, status, error=error)
    store = ResourceRepo(conn)
    current = store.get("Subscription", sub_id)
    if current is not None:
        resource = _public_resource(current.content, sub_id=sub_id, status=status, error=error)
        store.put(resource, now=now, index=search_entries(resource))
