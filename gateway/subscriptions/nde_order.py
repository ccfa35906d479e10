"""Flux 4 (TransmissionOrdreNotification): the ``NdE_NotificationRequestNdE`` the gateway POSTs to
``{channel.endpoint}/CommunicationRequest`` for each event of an NdE subscription.

The order is built from the declaration at the version that triggered it and from the subscription's
own contained resources: ``basedOn`` the subscription, ``medium`` from the channel type
(``mappings/codes/ChannelType_to_Medium.csv``, TRE_R200), the subject and requester copied from the
declaration, the recipient (the subscription's Subscriber) with its RecipientEndpoint, the EventType,
EventTime and EventEmissionTime extensions and the declaration's payload. Its id and identifier derive
from the subscription and the event number, so a retry sends the very same order.

Only ``201 Created`` is success (flux 4); any other answer is retried like every delivery.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import orjson

from gateway.canonical import CANONICAL_BASE
from gateway.db.engine import DbConnection as Connection
from gateway.db.repo import OutboxRecord, ResourceRepo, SubscriptionRecord
from gateway.mapping.ids import resource_id
from gateway.mapping.tables import CodeRow
from gateway.subscriptions.channels import DeliveryResult
from gateway.subscriptions.nde import (
    DIALECT,
    EXT_DECLARANT,
    EXT_EVENT_EMISSION_TIME,
    EXT_EVENT_TIME,
    EXT_EVENT_TYPE,
    EXT_RECIPIENT_ENDPOINT,
    EXT_SUBJECT,
    EXT_SUBSCRIBER,
    JSON,
    PROFILE_ORDER,
    contained,
    extensions,
)

ORDER_IDENTIFIER_SYSTEM: Final = f"{CANONICAL_BASE}/sid/nde-notification-order"
RECIPIENT_ID: Final = "recipient"
CREATED: Final = 201


@dataclass(frozen=True, slots=True)
class Order:
    body: bytes
    id: str


def is_order_subscription(sub: SubscriptionRecord) -> bool:
    """NdE subscriptions with a rest-hook channel get flux 4; email ones get the short flux 5 mail."""
    return sub.dialect == DIALECT and sub.channel_type == "rest-hook"


def target(sub: SubscriptionRecord) -> str:
    """Where a delivery goes: the notification manager's FHIR base + ``/CommunicationRequest`` for NdE."""
    if is_order_subscription(sub):
        return f"{sub.endpoint.rstrip('/')}/CommunicationRequest"
    return sub.endpoint


def judge(sub: SubscriptionRecord, result: DeliveryResult) -> DeliveryResult:
    """Flux 4 succeeds on ``201 Created`` only; a 200 or 204 is retried (the order may not be recorded)."""
    if not is_order_subscription(sub) or not result.ok or result.status_code == CREATED:
        return result
    return DeliveryResult(
        ok=False, status_code=result.status_code, error=f"HTTP {result.status_code}, not 201", retryable=True
    )


def build_order(
    conn: Connection,
    rows: list[OutboxRecord],
    sub: SubscriptionRecord,
    *,
    base_url: str,
    mediums: Mapping[str, CodeRow],
) -> Order | None:
    """The flux 4 body for an NdE event row; ``None`` for anything else (the Backport Bundle then)."""
    head = rows[0]
    if not is_order_subscription(sub) or head.notification_type != "event-notification" or not head.focus_id:
        return None
    store = ResourceRepo(conn)
    found = store.vread(str(head.focus_type), head.focus_id, head.focus_version or 0) or store.get(
        str(head.focus_type), head.focus_id
    )
    subscription = store.get("Subscription", sub.id)
    if found is None or subscription is None:
        return None
    order = notification_order(
        declaration=found.content,
        subscription=subscription.content,
        subscription_url=f"{base_url.rstrip('/')}/Subscription/{sub.id}",
        base_url=base_url,
        event_number=head.event_number,
        emitted_at=head.occurred_at,
        medium=mediums[sub.channel_type].coding() if sub.channel_type in mediums else None,
    )
    return Order(body=orjson.dumps(order), id=str(order["id"]))


def notification_order(
    *,
    declaration: JSON,
    subscription: JSON,
    subscription_url: str,
    base_url: str,
    event_number: int,
    emitted_at: datetime,
    medium: JSON | None,
) -> JSON:
    """The NdE_NotificationRequestNdE for one declaration and one subscription (pure)."""
    sub_id = subscription_url.rstrip("/").rsplit("/", 1)[-1]
    items = [copy.deepcopy(c) for c in declaration.get("contained", [])]
    recipient_ref = _recipient(subscription, declaration, items)
    endpoint = str((subscription.get("channel") or {}).get("endpoint", ""))
    order: JSON = {
        "resourceType": "CommunicationRequest",
        "id": resource_id("CommunicationRequest", f"nde-order|{sub_id}|{event_number}"),
        "meta": {"profile": [PROFILE_ORDER]},
        "contained": items,
        "extension": [
            *[copy.deepcopy(e) for e in extensions(declaration, EXT_EVENT_TYPE)],
            *[copy.deepcopy(e) for e in extensions(declaration, EXT_EVENT_TIME)],
            {"url": EXT_EVENT_EMISSION_TIME, "valueDateTime": declaration.get("authoredOn") or emitted_at.isoformat()},
        ],
        "identifier": [{"system": ORDER_IDENTIFIER_SYSTEM, "value": f"{sub_id}:{event_number}"}],
        "basedOn": [{"reference": subscription_url}],
        "status": declaration.get("status", "active"),
        "medium": [{"coding": [medium]}] if medium else [{"text": "rest-hook"}],
        "subject": copy.deepcopy(declaration["subject"]),
        "payload": copy.deepcopy(declaration.get("payload") or [{"contentString": "évènement"}]),
        "authoredOn": emitted_at.isoformat(),
        "requester": copy.deepcopy(declaration["requester"]),
        "recipient": [
            {"reference": recipient_ref, "extension": [{"url": EXT_RECIPIENT_ENDPOINT, "valueUrl": endpoint}]}
        ],
    }
    encounter = (declaration.get("encounter") or {}).get("reference")
    if encounter:
        order["encounter"] = {"reference": f"{base_url.rstrip('/')}/{encounter}"}
    return order


def _recipient(subscription: JSON, declaration: JSON, items: list[JSON]) -> str:
    """The Subscriber as the order's recipient. When it is the subscription's Subject (the patient) or its
    Declarant (the emitter), the order's own subject or requester stands for it (NdE: "aucune" to add)."""
    ref = _extension_reference(subscription, EXT_SUBSCRIBER)
    if ref == _extension_reference(subscription, EXT_SUBJECT):
        return str(declaration["subject"]["reference"])
    if ref == _extension_reference(subscription, EXT_DECLARANT):
        return str(declaration["requester"]["reference"])
    found = contained(subscription, ref)
    if found is None:  # cannot happen for a stored NdE subscription; the requester stands in
        return str(declaration["requester"]["reference"])
    recipient = {**copy.deepcopy(found), "id": RECIPIENT_ID}
    items.append(recipient)
    return f"#{RECIPIENT_ID}"


def _extension_reference(resource: JSON, url: str) -> str | None:
    found = extensions(resource, url)
    ref = (found[0].get("valueReference") or {}).get("reference") if found else None
    return str(ref) if ref else None
