"""Notification Bundles and SubscriptionStatus Parameters in the Subscriptions R5 Backport IG shape for R4."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gateway.canonical import CANONICAL_BASE, TRE_R254_SYSTEM

NOTIFICATION_PROFILE: Final = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"
)
STATUS_PROFILE: Final = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)
#: Extension on a ``notification-event`` parameter carrying the ANS NdE event type (``ADM``/``SOR``): the
#: Backport IG has no slot for it, so the official NdE event-type extension (a TRE_R254 CodeableConcept).
EVENT_CODE_EXTENSION_URL: Final = "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type"
#: Extension on a ``notification-event`` for the care circle topic: who joined (``joined``) or left (``left``).
MEMBER_CHANGE_EXTENSION_URL: Final = f"{CANONICAL_BASE}/StructureDefinition/careteam-member-change"
EVENT_CODE_SYSTEM: Final = TRE_R254_SYSTEM

SUBSCRIPTION_STATUSES: Final = frozenset({"requested", "active", "error", "off"})
NOTIFICATION_TYPES: Final = frozenset({"handshake", "heartbeat", "event-notification", "query-status", "query-event"})
PAYLOAD_CONTENTS: Final = frozenset({"empty", "id-only", "full-resource"})
#: Notification types that never carry events, whatever the caller passes.
_EVENTLESS_TYPES: Final = frozenset({"handshake", "heartbeat"})


@dataclass(frozen=True, kw_only=True)
class NotificationEvent:
    """One triggering event of a subscription, as stored in the event log."""

    event_number: int
    timestamp: datetime
    #: Relative reference such as ``"Encounter/abc"``; derived from ``focus_resource`` when ``None``.
    focus_reference: str | None
    #: The full resource, only used when the payload is ``full-resource``.
    focus_resource: dict[str, Any] | None
    #: Relative references such as ``("Patient/p1",)``.
    additional_context: tuple[str, ...] = ()
    #: Full resources for ``additional_context`` (``full-resource`` payload only).
    context_resources: tuple[dict[str, Any], ...] = ()
    #: ANS NdE event code (``"ADM"``, ``"SOR"``), carried in :data:`EVENT_CODE_EXTENSION_URL`.
    event_code: str | None = None
    #: Care circle changes: (``"joined"`` or ``"left"``, relative reference), in the CareTeam change extension.
    member_changes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class NotificationContext:
    """The subscription-level facts a notification reports."""

    subscription_id: str
    topic_url: str
    status: str
    notification_type: str
    events_since_start: int
    payload_content: str
    #: The gateway's FHIR base, e.g. ``"http://127.0.0.1:8000/fhir"``; used for absolute references.
    base_url: str
    error: str | None = None

    def __post_init__(self) -> None:
        # A typo here would produce a Bundle that platforms reject; fail where the bug is.
        if self.status not in SUBSCRIPTION_STATUSES:
            raise ValueError(f"unknown subscription status {self.status!r}")
        if self.notification_type not in NOTIFICATION_TYPES:
            raise ValueError(f"unknown notification type {self.notification_type!r}")
        if self.payload_content not in PAYLOAD_CONTENTS:
            raise ValueError(f"unknown payload content {self.payload_content!r}")


def build_status_parameters(ctx: NotificationContext, events: Sequence[NotificationEvent]) -> dict[str, Any]:
    """The SubscriptionStatus ``Parameters`` alone: first entry of a notification, and the ``$status`` body.

    Handshakes and heartbeats carry no ``notification-event``. With an ``empty`` payload the events keep
    their number and timestamp (so receivers can detect gaps) but reveal no reference at all, and the
    ``topic`` is left out (Backport IG: empty notifications omit it).
    """
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": _subscription_url(ctx)}},
        *([] if ctx.payload_content == "empty" else [{"name": "topic", "valueCanonical": ctx.topic_url}]),
        {"name": "status", "valueCode": ctx.status},
        {"name": "type", "valueCode": ctx.notification_type},
        # The R4 profile uses string for what is an int64 in R5.
        {"name": "events-since-subscription-start", "valueString": str(ctx.events_since_start)},
    ]
    if ctx.notification_type not in _EVENTLESS_TYPES:
        parameters.extend(_event_parameter(ctx, event) for event in events)
    if ctx.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": ctx.error}})
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def build_notification_bundle(
    ctx: NotificationContext, events: Sequence[NotificationEvent], *, bundle_id: str, now: datetime
) -> dict[str, Any]:
    """The ``history`` Bundle POSTed to the subscriber: status Parameters first, then the focus entries.

    ``id-only`` entries carry ``fullUrl``/``request``/``response`` and no resource; ``full-resource``
    entries add the resource when it was supplied. Entries are deduplicated by ``fullUrl`` (a Patient
    shared by several events appears once), keeping the first occurrence so event order is preserved.
    """
    status = build_status_parameters(ctx, events)
    status["id"] = bundle_id
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{bundle_id}",
            "resource": status,
            "request": {"method": "GET", "url": f"{_subscription_url(ctx)}/$status"},
            "response": {"status": "200"},
        }
    ]
    if ctx.payload_content != "empty" and ctx.notification_type not in _EVENTLESS_TYPES:
        seen: set[str] = set()
        for event in events:
            for ref, resource in _event_targets(event):
                entry = _resource_entry(ctx, ref, resource)
                if entry["fullUrl"] not in seen:
                    seen.add(entry["fullUrl"])
                    entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": _instant(now),
        "entry": entries,
    }


def _event_parameter(ctx: NotificationContext, event: NotificationEvent) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(event.event_number)},
        {"name": "timestamp", "valueInstant": _instant(event.timestamp)},
    ]
    if ctx.payload_content != "empty":
        focus = _focus_reference(event)
        if focus is not None:
            parts.append({"name": "focus", "valueReference": {"reference": _absolute(ctx.base_url, focus)}})
        parts.extend(
            {"name": "additional-context", "valueReference": {"reference": _absolute(ctx.base_url, ref)}}
            for ref in _context_references(event)
        )
    parameter: dict[str, Any] = {"name": "notification-event", "part": parts}
    extensions: list[dict[str, Any]] = []
    if event.event_code:
        extensions.append(
            {
                "url": EVENT_CODE_EXTENSION_URL,
                "valueCodeableConcept": {"coding": [{"system": EVENT_CODE_SYSTEM, "code": event.event_code}]},
            }
        )
    if event.member_changes and ctx.payload_content != "empty":
        extensions.append(
            {
                "url": MEMBER_CHANGE_EXTENSION_URL,
                "extension": [
                    {"url": change, "valueReference": {"reference": _absolute(ctx.base_url, ref)}}
                    for change, ref in event.member_changes
                ],
            }
        )
    if extensions:
        parameter["extension"] = extensions
    return parameter


def _event_targets(event: NotificationEvent) -> Iterable[tuple[str, dict[str, Any] | None]]:
    """(relative reference, resource or None) for the focus then each context resource of an event."""
    focus = _focus_reference(event)
    if focus is not None:
        yield focus, event.focus_resource
    by_ref = _index(event.context_resources)
    for ref in _context_references(event):
        yield ref, by_ref.get(ref)


def _resource_entry(ctx: NotificationContext, ref: str, resource: Mapping[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": _absolute(ctx.base_url, ref)}
    response: dict[str, Any] = {"status": "200"}
    if ctx.payload_content == "full-resource" and resource is not None:
        entry["resource"] = dict(resource)
        version = (resource.get("meta") or {}).get("versionId")
        if version:
            # Lets receivers ignore a stale version that overtakes a newer one.
            response["etag"] = f'W/"{version}"'
    entry["request"] = {"method": "PUT", "url": _relative(ctx.base_url, ref)}
    entry["response"] = response
    return entry


def _focus_reference(event: NotificationEvent) -> str | None:
    if event.focus_reference:
        return event.focus_reference
    if event.focus_resource is not None:
        return _reference_of(event.focus_resource)
    return None


def _context_references(event: NotificationEvent) -> list[str]:
    """``additional_context`` first, then any context resource not already listed there."""
    refs = list(dict.fromkeys(event.additional_context))
    for resource in event.context_resources:
        ref = _reference_of(resource)
        if ref is not None and ref not in refs:
            refs.append(ref)
    return refs


def _index(resources: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for resource in resources:
        ref = _reference_of(resource)
        if ref is not None:
            out.setdefault(ref, dict(resource))
    return out


def _reference_of(resource: Mapping[str, Any]) -> str | None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str) and rtype and rid:
        return f"{rtype}/{rid}"
    return None


def _subscription_url(ctx: NotificationContext) -> str:
    return _absolute(ctx.base_url, f"Subscription/{ctx.subscription_id}")


def _is_absolute(ref: str) -> bool:
    return "://" in ref or ref.startswith("urn:")


def _absolute(base_url: str, ref: str) -> str:
    if _is_absolute(ref):
        return ref
    return f"{base_url.rstrip('/')}/{ref.lstrip('/')}"


def _relative(base_url: str, ref: str) -> str:
    prefix = base_url.rstrip("/") + "/"
    if ref.startswith(prefix):
        return ref[len(prefix) :]
    return ref


def _instant(value: datetime) -> str:
    """FHIR ``instant``: an offset is mandatory, so naive datetimes are a bug in the caller."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("notification timestamps must be timezone-aware")
    return value.isoformat()
