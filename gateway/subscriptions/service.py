"""Subscription use cases: create, update, delete, resend; the table and the FHIR resource always agree."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fhir.resources.R4B.subscription import Subscription as SubscriptionModel
from pydantic import ValidationError

from gateway.canonical import BACKPORT_SD, CANONICAL_BASE
from gateway.db.engine import DbConnection as Connection
from gateway.db.indexing import search_entries
from gateway.db.repo import OutboxRepo, ResourceRepo, StoredResource, SubscriptionRecord, SubscriptionRepo
from gateway.errors import (
    ElementValueError,
    EndpointRefusedError,
    FhirError,
    ForbiddenError,
    NotFoundError,
    NotSupportedError,
    ProfileValueError,
    StructureError,
)
from gateway.mapping.tables import EVENT_TYPE_TABLE, EVENT_TYPE_TERMINOLOGY, Tables
from gateway.subscriptions import nde
from gateway.subscriptions.channels import channel_header_refusal
from gateway.subscriptions.endpoints import check_endpoint
from gateway.subscriptions.matching import parse_criteria
from gateway.subscriptions.nde_subscription import is_nde, parse_nde
from gateway.subscriptions.topics import BY_URL, TOPIC_BASE

JSON = dict[str, Any]
BACKPORT = BACKPORT_SD
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
TIMEOUT = f"{BACKPORT}/backport-timeout"
MAX_COUNT = f"{BACKPORT}/backport-max-count"
#: The Backport IG's R4 Subscription profile, claimed by every topic-based subscription the gateway returns.
BACKPORT_PROFILE = f"{BACKPORT}/backport-subscription"
DEFAULT_PAYLOAD_CONTENT = "id-only"
#: ANS NdE subscriptions listen to the event declarations (flux 3), like any subscriber of this topic.
NDE_TOPIC = f"{TOPIC_BASE}/event-declaration"
#: Our extension on ``Subscription.channel``: the HMAC-SHA256 key for the body signature. A platform
#: may send its own; otherwise one is generated and returned once, in the create response only.
SIGNING_SECRET = f"{CANONICAL_BASE}/StructureDefinition/subscription-signing-secret"
CHANNEL_TYPES = frozenset({"rest-hook", "email"})
PAYLOAD_CONTENTS = frozenset({"empty", "id-only", "full-resource"})
#: Email carries no clinical detail: at most the reference of what changed (MSSanté is mail, not FHIR).
EMAIL_CONTENTS = frozenset({"empty", "id-only"})
MAX_TIMEOUT = 120
#: Filters that name patients (a reference, an identifier, a care circle member): a subscription without
#: one selects patients nobody named (a whole facility, every admission) and needs the population grant.
NAMING_FILTERS = frozenset({"patient", "patient.identifier", "identifier", "care-team-member"})
MASK = "***"
_MAILTO = re.compile(r"^mailto:[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
Resolver = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the gateway keeps of a submitted Subscription."""

    topic: str
    filters: list[JSON]
    endpoint: str
    channel_type: str
    payload_content: str
    headers: list[str]
    secret: str | None
    requested_status: str
    heartbeat_period: int | None
    timeout: int | None
    max_count: int | None
    dialect: str = "backport"
    start_at: datetime | None = None
    end_at: datetime | None = None


def _extensions(element: JSON | None, url: str) -> list[JSON]:
    return [e for e in (element or {}).get("extension", []) if e.get("url") == url]


def _int_extension(channel: JSON, url: str, *, minimum: int, maximum: int | None = None) -> int | None:
    for ext in _extensions(channel, url):
        value = ext.get("valueUnsignedInt", ext.get("valuePositiveInt"))
        if not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
            bound = f" and at most {maximum}" if maximum is not None else ""
            raise FhirError(f"{url.rsplit('/', 1)[-1]} must be an integer of at least {minimum}{bound}")
        return value
    return None


def _validate(body: JSON) -> None:
    if body.get("resourceType") != "Subscription":
        raise FhirError("the body must be a Subscription resource")
    try:
        SubscriptionModel.model_validate({k: v for k, v in body.items() if k not in ("id", "meta")})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise StructureError(f"invalid Subscription: {where}: {first.get('msg')}") from exc


def _endpoint(channel: JSON, *, allowlist: list[str], resolver: Resolver | None) -> str:
    endpoint = str(channel.get("endpoint") or "")
    if channel.get("type") == "email":
        if not _MAILTO.match(endpoint):
            raise ElementValueError("an email channel needs a single mailto: address as endpoint")
        return endpoint
    kwargs = {"resolver": resolver} if resolver else {}
    refusal = check_endpoint(endpoint, allowlist=allowlist, **kwargs)
    if refusal:
        raise EndpointRefusedError(f"channel.endpoint refused: {refusal}")
    return endpoint


def _channel_headers(channel: JSON) -> list[str]:
    headers = channel.get("header") or []
    refusal = channel_header_refusal(headers if isinstance(headers, list) else [headers])
    if refusal:
        raise ProfileValueError(refusal, location="Subscription.channel.header")
    return [str(h) for h in headers]


def _end(body: JSON) -> datetime | None:
    """``Subscription.end``: from then on the subscription is ``off`` (an instant needs its offset)."""
    if not body.get("end"):
        return None
    try:
        end = datetime.fromisoformat(str(body["end"]).replace("Z", "+00:00"))
    except ValueError:
        end = None
    if end is None or end.tzinfo is None:
        raise ElementValueError("Subscription.end must be an instant with its offset", location="Subscription.end")
    return end


def parse_subscription(
    body: JSON, *, allowlist: list[str], resolver: Resolver | None = None, tables: Tables | None = None
) -> Parsed:
    """Check a submitted Subscription (structure, topic, filters, channel, endpoint). Errors are 4xx.

    Two dialects share everything after parsing: the Backport IG's (``criteria`` a topic canonical) and
    ANS NdE's (an ``NdE_SubscriptionNdE``, ``criteria`` a CommunicationRequest search; needs ``tables``
    for the TRE_R254 event types).
    """
    _validate(body)
    if is_nde(body):
        if tables is None:
            raise NotSupportedError("ANS NdE subscriptions are not accepted here")
        request = parse_nde(
            body,
            known=tables.codes[EVENT_TYPE_TERMINOLOGY],
            emitted=frozenset(r.target_code for r in tables.codes[EVENT_TYPE_TABLE].values()),
        )
        channel_parts = _channel(body, allowlist=allowlist, resolver=resolver)
        return Parsed(
            topic=NDE_TOPIC,
            filters=request.filters,
            requested_status=str(body.get("status", "requested")),
            heartbeat_period=None,
            timeout=None,
            max_count=None,
            dialect=nde.DIALECT,
            start_at=request.start,
            end_at=request.end,
            **channel_parts,
        )
    topic = BY_URL.get(str(body.get("criteria", "")))
    if topic is None:
        known = ", ".join(sorted(BY_URL))
        raise NotSupportedError(f"criteria must be a topic canonical URL; known topics: {known}")
    filters = []
    for ext in _extensions(body.get("_criteria"), FILTER_CRITERIA):
        filters += [f.as_json() for f in parse_criteria(str(ext.get("valueString", "")), resource=topic.resource)]
    channel = body.get("channel") or {}
    return Parsed(
        topic=topic.url,
        filters=filters,
        requested_status=str(body.get("status", "requested")),
        heartbeat_period=_int_extension(channel, HEARTBEAT_PERIOD, minimum=1),
        timeout=_int_extension(channel, TIMEOUT, minimum=1, maximum=MAX_TIMEOUT),
        max_count=_int_extension(channel, MAX_COUNT, minimum=1, maximum=1000),
        end_at=_end(body),
        **_channel(body, allowlist=allowlist, resolver=resolver),
    )


def _channel(body: JSON, *, allowlist: list[str], resolver: Resolver | None) -> dict[str, Any]:
    """The channel's type, endpoint, payload content, headers and signing secret (both dialects)."""
    channel = body.get("channel") or {}
    channel_type = str(channel.get("type"))
    if channel_type not in CHANNEL_TYPES:
        raise NotSupportedError(f"channel.type must be one of {sorted(CHANNEL_TYPES)}")
    if channel_type == "rest-hook" and channel.get("payload", "application/fhir+json") not in (
        "application/fhir+json",
        "application/json",
    ):
        raise NotSupportedError("channel.payload must be application/fhir+json")
    allowed = EMAIL_CONTENTS if channel_type == "email" else PAYLOAD_CONTENTS
    default = DEFAULT_PAYLOAD_CONTENT
    content = next((str(e.get("valueCode")) for e in _extensions(channel.get("_payload"), PAYLOAD_CONTENT)), default)
    if content not in allowed:
        raise ElementValueError(f"payload content for {channel_type} must be one of {sorted(allowed)}")
    secret = next((str(e.get("valueString")) for e in _extensions(channel, SIGNING_SECRET)), None)
    if secret is not None and len(secret) < 16:
        raise ElementValueError("a signing secret must be at least 16 characters")
    return {
        "endpoint": _endpoint(channel, allowlist=allowlist, resolver=resolver),
        "channel_type": channel_type,
        "payload_content": content,
        "headers": _channel_headers(channel),
        "secret": secret,
    }


def _initial_status(parsed: Parsed, *, now: datetime) -> str:
    """``off`` once ``end`` has come; NdE subscriptions start ``active`` (NdE has no handshake: a
    notification manager hears only notification orders); Backport ones ``requested``, handshake first."""
    if parsed.end_at is not None and parsed.end_at <= now:
        return "off"
    return "active" if parsed.dialect == nde.DIALECT else "requested"


def _check_population(parsed: Parsed, *, may_select_population: bool) -> None:
    if may_select_population or any(f["param"] in NAMING_FILTERS for f in parsed.filters):
        return
    raise ForbiddenError(
        "this subscription selects patients nobody named (no patient, identifier or care-team-member filter): "
        "it needs the gateway/population scope, granted by the operator"
    )


def _unmasked(headers: list[str], current: list[str]) -> list[str]:
    """A platform that PUTs back what it read sends ``Name: ***``: keep the value it set before."""
    before = {h.partition(":")[0].strip().lower(): h for h in current}
    out = []
    for header in headers:
        name, _, value = header.partition(":")
        if value.strip() == MASK and name.strip().lower() in before:
            out.append(before[name.strip().lower()])
        elif value.strip() == MASK:
            raise ElementValueError(f"channel.header {name.strip()!r}: send its value, not the mask")
        else:
            out.append(header)
    return out


def create_subscription(
    conn: Connection,
    body: JSON,
    *,
    allowlist: list[str],
    now: datetime,
    resolver: Resolver | None = None,
    tables: Tables | None = None,
    owner: str = "",
    may_select_population: bool = True,
) -> tuple[StoredResource, str | None]:
    """Store a new subscription and queue its handshake if it needs one; returns (resource, new secret)."""
    parsed = parse_subscription(body, allowlist=allowlist, resolver=resolver, tables=tables)
    _check_population(parsed, may_select_population=may_select_population)
    if any(h.partition(":")[2].strip() == MASK for h in parsed.headers):
        raise ElementValueError("channel.header: send the header's value, not the mask")
    secret = parsed.secret or secrets.token_urlsafe(32)
    record = SubscriptionRecord(
        id=uuid.uuid4().hex,
        status=_initial_status(parsed, now=now),
        topic=parsed.topic,
        endpoint=parsed.endpoint,
        channel_type=parsed.channel_type,
        payload_content=parsed.payload_content,
        headers=parsed.headers,
        filters=parsed.filters,
        secret=secret,
        events_since_start=0,
        error=None,
        created_at=now,
        heartbeat_period=parsed.heartbeat_period,
        timeout=parsed.timeout,
        max_count=parsed.max_count,
        dialect=parsed.dialect,
        start_at=parsed.start_at,
        end_at=parsed.end_at,
        owner=owner,
    )
    SubscriptionRepo(conn).add(record)
    stored = _write_resource(conn, body, record, now=now)
    if record.status == "requested":
        _queue_handshake(conn, record, now=now)
    return stored, None if parsed.secret else secret


def update_subscription(
    conn: Connection,
    sub_id: str,
    body: JSON,
    *,
    allowlist: list[str],
    now: datetime,
    resolver: Resolver | None = None,
    tables: Tables | None = None,
    owner: str | None = None,
    may_select_population: bool = True,
) -> StoredResource:
    """PUT: change the channel, filters or topic; ``status: off`` pauses; ``requested`` (or ``active``) on a
    subscription in error or off asks for a new handshake and sends what it missed, in order.

    With an ``owner`` (a platform), another platform's subscription is not found."""
    subs = SubscriptionRepo(conn, owner=owner)
    current = subs.get(sub_id)
    if current is None:
        raise NotFoundError(f"Subscription/{sub_id} not found")
    parsed = parse_subscription(body, allowlist=allowlist, resolver=resolver, tables=tables)
    _check_population(parsed, may_select_population=may_select_population)
    parsed = replace(parsed, headers=_unmasked(parsed.headers, current.headers))
    status, error = current.status, current.error
    restart = parsed.requested_status in ("requested", "active") and current.status in ("error", "off")
    if parsed.requested_status == "off" or (parsed.end_at is not None and parsed.end_at <= now):
        status, error = "off", None
    elif restart or parsed.endpoint != current.endpoint:
        status, error = _initial_status(parsed, now=now), None  # a new endpoint must answer a handshake too
    record = replace(
        current,
        status=status,
        error=error,
        topic=parsed.topic,
        endpoint=parsed.endpoint,
        channel_type=parsed.channel_type,
        payload_content=parsed.payload_content,
        headers=parsed.headers,
        filters=parsed.filters,
        secret=parsed.secret or current.secret,
        heartbeat_period=parsed.heartbeat_period,
        timeout=parsed.timeout,
        max_count=parsed.max_count,
        dialect=parsed.dialect,
        start_at=parsed.start_at,
        end_at=parsed.end_at,
    )
    subs.update(record)
    if status != current.status or parsed.endpoint != current.endpoint:
        if status == "requested":
            # A new endpoint gets a fresh handshake budget even if the old one was still being tried.
            OutboxRepo(conn).requeue(sub_id, now=now)
            _queue_handshake(conn, record, now=now)
        elif status == "active":
            OutboxRepo(conn).requeue(sub_id, now=now)  # NdE: no handshake, what waited goes out in order
    return _write_resource(conn, body, record, now=now)


def delete_subscription(conn: Connection, sub_id: str, *, now: datetime, owner: str | None = None) -> None:
    if SubscriptionRepo(conn, owner=owner).get(sub_id) is None:
        raise NotFoundError(f"Subscription/{sub_id} not found")
    SubscriptionRepo(conn).delete(sub_id)
    ResourceRepo(conn).delete("Subscription", sub_id, now=now)


def resend(conn: Connection, sub_id: str, *, now: datetime) -> int:
    """Operator action: reactivate a subscription in error and requeue its undelivered events."""
    current = SubscriptionRepo(conn).get(sub_id)
    if current is None:
        raise NotFoundError(f"Subscription/{sub_id} not found")
    count = OutboxRepo(conn).requeue(sub_id, now=now)
    if current.status in ("error", "off"):
        if current.dialect == nde.DIALECT:
            set_status(conn, sub_id, "active", now=now)
        else:
            set_status(conn, sub_id, "requested", now=now)
            _queue_handshake(conn, current, now=now)
    return count


def expire_ended(conn: Connection, *, now: datetime) -> list[str]:
    """``Subscription.end`` honoured: subscriptions whose end has come go ``off`` (and record nothing)."""
    ended = SubscriptionRepo(conn).ended(now=now)
    for sub_id in ended:
        set_status(conn, sub_id, "off", now=now)
    return ended


def _queue_handshake(conn: Connection, record: SubscriptionRecord, *, now: datetime) -> None:
    """While a subscription is ``requested`` only its handshake is due; its events wait, in order."""
    OutboxRepo(conn).add(
        subscription_id=record.id, event_number=0, notification_type="handshake", topic=record.topic, occurred_at=now
    )


def _write_resource(conn: Connection, body: JSON, record: SubscriptionRecord, *, now: datetime) -> StoredResource:
    resource = public_resource(body, sub_id=record.id, status=record.status, error=record.error)
    stored, _ = ResourceRepo(conn).put(resource, now=now, index=search_entries(resource))
    return stored


def public_resource(body: JSON, *, sub_id: str, status: str, error: str | None) -> JSON:
    """The Subscription as readable through FHIR: our status, never the signing secret, headers masked.

    It claims the profile it meets: NdE's ``nde-subscription``, or the Backport IG's
    ``backport-subscription``, with the payload content the gateway applies stated in its extension.
    Secrets are write-only: ``channel.header`` values often carry the platform's own bearer token, so
    only their names are kept (``Authorization: ***``); the delivery worker reads the real ones from the
    subscriptions table.
    """
    resource = {k: v for k, v in body.items() if k not in ("meta", "text")}
    resource["id"] = sub_id
    resource["status"] = status
    channel = dict(resource.get("channel") or {})
    if channel.get("header"):
        channel["header"] = [mask_header(str(h)) for h in channel["header"]]
    channel["extension"] = [e for e in channel.get("extension", []) if e.get("url") != SIGNING_SECRET]
    if not channel["extension"]:
        channel.pop("extension")
    if is_nde(body):
        resource["meta"] = {"profile": [nde.PROFILE_SUBSCRIPTION]}
    else:
        resource["meta"] = {"profile": [BACKPORT_PROFILE]}
        channel = _with_payload_content(channel)
    resource["channel"] = channel
    if error:
        resource["error"] = error
    else:
        resource.pop("error", None)
    return resource


def _with_payload_content(channel: JSON) -> JSON:
    """Backport R4: ``channel.payload`` with its ``backport-payload-content`` extension, as applied."""
    payload_ext = dict(channel.get("_payload") or {})
    if not _extensions(payload_ext, PAYLOAD_CONTENT):
        extension = [*payload_ext.get("extension", []), {"url": PAYLOAD_CONTENT, "valueCode": DEFAULT_PAYLOAD_CONTENT}]
        payload_ext["extension"] = extension
    out = {**channel, "_payload": payload_ext}
    if channel.get("type") == "rest-hook" and not channel.get("payload"):
        out["payload"] = "application/fhir+json"
    return out


def set_status(conn: Connection, sub_id: str, status: str, *, now: datetime, error: str | None = None) -> None:
    """Move a subscription to ``status`` in the table and in a new version of its resource."""
    SubscriptionRepo(conn).set_status(sub_id, status, error=error)
    store = ResourceRepo(conn)
    current = store.get("Subscription", sub_id)
    # A delivery in flight when the subscription was deleted must not bring its resource back.
    if current is not None and not current.deleted:
        resource = public_resource(current.content, sub_id=sub_id, status=status, error=error)
        store.put(resource, now=now, index=search_entries(resource))


def mask_header(header: str) -> str:
    name, sep, _ = header.partition(":")
    return f"{name.strip()}: {MASK}" if sep else MASK
