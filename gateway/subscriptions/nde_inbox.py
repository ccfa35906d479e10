"""NdE CommunicationRequests received through ``POST /fhir/CommunicationRequest``.

As subscription manager the gateway receives event declarations (flux 3) from other emitters; as
notification manager it receives notification orders (flux 4). Both are checked against their profile's
constraints (``input/fsh/``), then stored. A declaration also fires the event-declaration topic, so NdE
and Backport subscribers hear of it like of one the gateway made from an ADT feed; an order is recorded
(flux 5, the message to the person, is outside the NdE specification).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Final

from fhir.resources.R4B.communicationrequest import CommunicationRequest as CommunicationRequestModel
from pydantic import ValidationError

from gateway.db.engine import DbConnection as Connection
from gateway.db.repo import ResourceRepo, StoredResource
from gateway.db.unit import UnitOfWork
from gateway.errors import FhirError, ProfileViolationError, StorageError, StructureError
from gateway.mapping.tables import Tables
from gateway.state.apply import Unit, record_received
from gateway.subscriptions.nde import (
    EXT_EVENT_EMISSION_TIME,
    EXT_EVENT_TIME,
    EXT_EVENT_TYPE,
    EXT_RECIPIENT_ENDPOINT,
    JSON,
    PROFILE_DECLARATION,
    PROFILE_ORDER,
    contained,
    extensions,
)

Check = Callable[[JSON], str | None]
PATIENT: Final = frozenset({"Patient"})
EMITTER: Final = frozenset({"Organization", "Practitioner"})
RECIPIENT: Final = frozenset({"Organization", "Practitioner", "Patient", "RelatedPerson"})


def _count(url: str, low: int, high: int, name: str) -> Check:
    def check(resource: JSON) -> str | None:
        n = len(extensions(resource, url))
        return None if low <= n <= high else f"CommunicationRequest.extension[{name}]: {low}..{high}, found {n}"

    return check


def _contained_ref(path: str, types: frozenset[str]) -> Check:
    """``subject``/``requester``: 1.., aggregation contained, of the allowed types."""

    def check(resource: JSON) -> str | None:
        value = resource.get(path)
        ref = (value[0] if isinstance(value, list) and value else value or {}).get("reference")
        target = contained(resource, str(ref) if ref else None)
        if target is None or target.get("resourceType") not in types:
            return f"CommunicationRequest.{path}: a reference to a contained {' or '.join(sorted(types))} is required"
        return None

    return check


def _exactly(path: str, n: int = 1) -> Check:
    def check(resource: JSON) -> str | None:
        value = resource.get(path)
        count = len(value) if isinstance(value, list) else int(value is not None)
        return None if count == n else f"CommunicationRequest.{path}: {n}..{n}, found {count}"

    return check


def _subject_xor_about(resource: JSON) -> str | None:
    """Invariant event-subject: ``subject.exists() xor about.exists()``."""
    return None if bool(resource.get("subject")) != bool(resource.get("about")) else "event-subject: subject xor about"


def _contained_present(resource: JSON) -> str | None:
    return None if resource.get("contained") else "CommunicationRequest.contained: 1..*"


def _recipient_endpoint(resource: JSON) -> str | None:
    for recipient in resource.get("recipient") or []:
        if len(extensions(recipient, EXT_RECIPIENT_ENDPOINT)) != 1 or not extensions(recipient, EXT_RECIPIENT_ENDPOINT)[
            0
        ].get("valueUrl"):
            return "CommunicationRequest.recipient.extension[RecipientEndpoint]: 1..1 valueUrl"
    return None


DECLARATION_RULES: Final[tuple[Check, ...]] = (
    _contained_present,
    _count(EXT_EVENT_TYPE, 1, 1, "EventType"),
    _count(EXT_EVENT_TIME, 1, 1, "EventTime"),
    _contained_ref("subject", PATIENT),
    _exactly("payload"),
    _contained_ref("requester", EMITTER),
    _subject_xor_about,
)
ORDER_RULES: Final[tuple[Check, ...]] = (
    _contained_present,
    _count(EXT_EVENT_EMISSION_TIME, 0, 1, "EventEmissionTime"),
    _count(EXT_EVENT_TIME, 0, 1, "EventTime"),
    _count(EXT_EVENT_TYPE, 1, 1, "EventType"),
    _exactly("basedOn"),
    _exactly("medium"),
    _contained_ref("subject", PATIENT),
    _exactly("payload"),
    _contained_ref("requester", EMITTER),
    _exactly("recipient"),
    _contained_ref("recipient", RECIPIENT),
    _recipient_endpoint,
    _subject_xor_about,
)


def kind_of(resource: JSON) -> str:
    """``order`` (flux 4) when it claims the NotificationRequest profile or is ``basedOn`` a subscription;
    else ``declaration`` (flux 3)."""
    profiles = (resource.get("meta") or {}).get("profile") or []
    if PROFILE_ORDER in profiles or any(
        "Subscription/" in str(b.get("reference", "")) for b in resource.get("basedOn") or []
    ):
        return "order"
    return "declaration"


def problems(resource: JSON) -> list[str]:
    """Every NdE constraint the CommunicationRequest breaks (empty: it meets its profile's FSH rules)."""
    rules = ORDER_RULES if kind_of(resource) == "order" else DECLARATION_RULES
    return [p for p in (rule(resource) for rule in rules) if p]


def receive(conn: Connection, body: JSON, *, tables: Tables, now: datetime) -> StoredResource:
    """Check, store and (for a declaration) notify; a new server-assigned id, as for any create."""
    if body.get("resourceType") != "CommunicationRequest":
        raise FhirError("the body must be a CommunicationRequest")
    try:
        CommunicationRequestModel.model_validate({k: v for k, v in body.items() if k not in ("id", "meta")})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise StructureError(f"invalid CommunicationRequest: {where}: {first.get('msg')}") from exc
    found = problems(body)
    if found:
        raise ProfileViolationError("; ".join(found), location=found[0].split(":")[0])
    kind = kind_of(body)
    resource = {k: v for k, v in body.items() if k not in ("id", "meta", "text")}
    resource["id"] = uuid.uuid4().hex
    resource["meta"] = {"profile": [PROFILE_ORDER if kind == "order" else PROFILE_DECLARATION]}
    if kind == "declaration":
        resource = _as_known_patient(ResourceRepo(conn), resource)
    unit = Unit.of(UnitOfWork(conn), now=now, message_id=0, tables=tables)
    stored = record_received(unit, resource)
    if stored is None:  # cannot happen for a new id; keeps the type honest
        raise StorageError("the CommunicationRequest was not stored")
    return stored


def _as_known_patient(store: ResourceRepo, resource: JSON) -> JSON:
    """When the declared Patient is one of the gateway's (same INS or IPP), its contained copy takes that
    Patient's id, so that ``subject``/``patient`` searches and subscription filters find it."""
    ref = str((resource.get("subject") or {}).get("reference", ""))
    patient = contained(resource, ref)
    if patient is None:
        return resource
    for ident in patient.get("identifier") or []:
        if not ident.get("system") or not ident.get("value"):
            continue
        hits, _ = store.search("Patient", [("identifier", ident["system"], ident["value"])], limit=1, count=False)
        if hits:
            known = hits[0].id
            items = [{**c, "id": known} if c is patient else c for c in resource["contained"]]
            return {**resource, "contained": items, "subject": {**resource["subject"], "reference": f"#{known}"}}
    return resource
