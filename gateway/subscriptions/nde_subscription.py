"""Flux 1 (SouscriptionAbonnement): reading an ``NdE_SubscriptionNdE`` into what the gateway keeps.

The profile's requirements are checked here, each refusal a ``422`` naming the element: ``contained``
(1..*, FR Core Patient, Practitioner, Organization or RelatedPerson), the Start, Subject, Declarant,
EventType and Subscriber extensions (1..1, references resolved among the contained resources, of the
types the extensions allow), SubscriptionDate (0..1) and ``criteria``, a search on CommunicationRequest
by ``event-type``. The Subject's Patient selects the gateway's patients by its identifiers (INS, or an
IPP with its system), never by demographics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import parse_qsl

from gateway.errors import (
    ProfileCodeError,
    ProfileRequiredError,
    ProfileUnsupportedError,
    ProfileValueError,
    ProfileViolationError,
)
from gateway.mapping.tables import CodeRow
from gateway.subscriptions.nde import (
    CONTAINED_TYPES,
    EVENT_TYPE_SYSTEM,
    EXT_DECLARANT,
    EXT_EVENT_TYPE,
    EXT_START,
    EXT_SUBJECT,
    EXT_SUBSCRIBER,
    EXT_SUBSCRIPTION_DATE,
    JSON,
    PROFILE_SUBSCRIPTION,
    SD,
    contained,
    event_type_codes,
    extensions,
    join_tokens,
)
from gateway.token_lists import split_tokens

#: Extension → (element name in errors, resource types its reference may target; empty: a dateTime).
REQUIRED: Final[dict[str, tuple[str, frozenset[str]]]] = {
    EXT_START: ("Start", frozenset()),
    EXT_SUBJECT: ("Subject", frozenset({"Patient"})),
    EXT_DECLARANT: ("Declarant", frozenset({"Organization", "Practitioner"})),
    EXT_EVENT_TYPE: ("EventType", frozenset()),
    EXT_SUBSCRIBER: ("Subscriber", CONTAINED_TYPES),
}
#: Criteria parameters a platform may use; each becomes a filter of the event-declaration topic.
CRITERIA_PARAMS: Final = frozenset({"event-type", "subject", "patient", "subject.identifier", "patient.identifier"})
#: Criteria parameter → the matching filter (``subject`` and ``patient`` are the same person here).
FILTER_OF: Final = {
    "subject": "patient",
    "patient": "patient",
    "subject.identifier": "patient.identifier",
    "patient.identifier": "patient.identifier",
}


@dataclass(frozen=True, slots=True)
class NdeSubscription:
    """What an NdE subscription selects: event types, patients (by identifier), and its validity."""

    event_codes: tuple[str, ...]
    filters: list[JSON]
    start: datetime
    end: datetime | None


def is_nde(body: JSON) -> bool:
    """An NdE subscription says so by its profile, its NdE extensions, or a CommunicationRequest criteria."""
    profiles = (body.get("meta") or {}).get("profile") or []
    if PROFILE_SUBSCRIPTION in profiles:
        return True
    if str(body.get("criteria", "")).startswith("CommunicationRequest"):
        return True
    return any(isinstance(e, dict) and str(e.get("url", "")).startswith(f"{SD}/") for e in body.get("extension", []))


def _refuse(
    element: str, message: str, *, kind: type[ProfileViolationError] = ProfileRequiredError
) -> ProfileViolationError:
    return kind(f"{element}: {message}", location=element)


def _one(body: JSON, url: str) -> JSON:
    name, _ = REQUIRED.get(url, (url.rsplit("/", 1)[-1], frozenset()))
    found = extensions(body, url)
    if len(found) != 1:
        raise _refuse(f"Subscription.extension[{name}]", f"exactly one {name} extension ({url}) is required")
    return found[0]


def _date_time(ext: JSON, element: str) -> datetime:
    raw = ext.get("valueDateTime")
    try:
        value = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise _refuse(element, "valueDateTime must be a date and time with its offset", kind=ProfileValueError)
    return value


def _target(body: JSON, url: str) -> JSON:
    name, types = REQUIRED[url]
    element = f"Subscription.extension[{name}].valueReference"
    ref = (_one(body, url).get("valueReference") or {}).get("reference")
    if not ref:
        raise _refuse(element, "a reference to a contained resource is required")
    resource = contained(body, str(ref))
    if resource is None:
        raise _refuse(
            element, f"{ref!r} names no contained resource (NdE references are contained)", kind=ProfileValueError
        )
    if resource.get("resourceType") not in types:
        raise _refuse(element, f"must reference a contained {' or '.join(sorted(types))}", kind=ProfileValueError)
    return resource


def _check_contained(body: JSON) -> None:
    items = body.get("contained")
    if not isinstance(items, list) or not items:
        raise _refuse("Subscription.contained", "the referenced resources must be contained (1..*)")
    for index, item in enumerate(items):
        rtype = item.get("resourceType") if isinstance(item, dict) else None
        if rtype not in CONTAINED_TYPES:
            raise _refuse(
                f"Subscription.contained[{index}]",
                f"must be a FR Core {', '.join(sorted(CONTAINED_TYPES))}",
                kind=ProfileValueError,
            )
        if not item.get("id"):
            raise _refuse(f"Subscription.contained[{index}].id", "a contained resource needs an id")


def _event_type(body: JSON, known: Mapping[str, CodeRow]) -> str:
    element = "Subscription.extension[EventType].valueCodeableConcept"
    _one(body, EXT_EVENT_TYPE)
    codes = event_type_codes(body)
    if not codes:
        raise _refuse(element, f"a coding from TRE_R254-TypeEvenement ({EVENT_TYPE_SYSTEM}) is required")
    system, code = codes[0]
    if system != EVENT_TYPE_SYSTEM or code not in known:
        raise _refuse(element, f"{system}|{code} is not a TRE_R254 event type", kind=ProfileCodeError)
    return code


def _criteria(body: JSON) -> list[tuple[str, str]]:
    criteria = str(body.get("criteria") or "")
    rtype, _, query = criteria.partition("?")
    if rtype != "CommunicationRequest":
        raise _refuse(
            "Subscription.criteria",
            "must be a search on CommunicationRequest, e.g. CommunicationRequest?event-type=ADM",
        )
    pairs = parse_qsl(query, keep_blank_values=True)
    for name, value in pairs:
        if name not in CRITERIA_PARAMS:
            raise _refuse(
                "Subscription.criteria", f"search parameter {name!r} is not supported", kind=ProfileUnsupportedError
            )
        if not value:
            raise _refuse("Subscription.criteria", f"search parameter {name!r} has no value", kind=ProfileValueError)
    return pairs


def _codes(values: list[str], *, known: Mapping[str, CodeRow], emitted: frozenset[str]) -> list[str]:
    codes = []
    for token in values:
        system, sep, code = token.rpartition("|")
        if (sep and system not in ("", EVENT_TYPE_SYSTEM)) or code not in known:
            raise _refuse(
                "Subscription.criteria", f"event-type {token!r} is not a TRE_R254 code", kind=ProfileCodeError
            )
        if code not in emitted:
            raise _refuse(
                "Subscription.criteria",
                f"event-type {code} is never emitted here (ADT feeds express {', '.join(sorted(emitted))})",
                kind=ProfileUnsupportedError,
            )
        codes.append(code)
    return codes


def _identifiers(patient: JSON) -> list[str]:
    """The Subject's identifiers as ``system|value`` tokens; one without a system could name anyone."""
    out = []
    for index, ident in enumerate(patient.get("identifier") or []):
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        if not ident.get("system"):
            raise _refuse(
                f"Subscription.contained[Patient].identifier[{index}].system",
                "a patient identifier needs its system (INS OID, or the IPP's assigning authority)",
                kind=ProfileValueError,
            )
        out.append(f"{ident['system']}|{ident['value']}")
    return out


def parse_nde(body: JSON, *, known: Mapping[str, CodeRow], emitted: frozenset[str]) -> NdeSubscription:
    """Check an NdE subscription; ``known`` is TRE_R254, ``emitted`` the codes ADT events express."""
    _check_contained(body)
    start = _date_time(_one(body, EXT_START), "Subscription.extension[Start].valueDateTime")
    subscription_date = extensions(body, EXT_SUBSCRIPTION_DATE)
    if len(subscription_date) > 1:
        raise _refuse(
            "Subscription.extension[SubscriptionDate]", "at most one SubscriptionDate", kind=ProfileValueError
        )
    if subscription_date:
        _date_time(subscription_date[0], "Subscription.extension[SubscriptionDate].valueDateTime")
    patient = _target(body, EXT_SUBJECT)
    _target(body, EXT_DECLARANT)
    _target(body, EXT_SUBSCRIBER)
    declared = _event_type(body, known)
    pairs = _criteria(body)
    listed = [t for name, value in pairs if name == "event-type" for t in split_tokens(value)]
    codes = _codes(listed or [declared], known=known, emitted=emitted)
    filters: list[JSON] = [{"param": "event-type", "value": join_tokens(dict.fromkeys(codes))}]
    # The Subject is the subscription's patient: its identifiers select him (any of them, OR).
    filters.append({"param": "patient.identifier", "value": join_tokens(_identifiers(patient))})
    for name, value in pairs:
        if name != "event-type":
            filters.append({"param": FILTER_OF[name], "value": value})
    end = None
    if body.get("end"):
        end = _date_time({"valueDateTime": body["end"]}, "Subscription.end")
    return NdeSubscription(event_codes=tuple(dict.fromkeys(codes)), filters=filters, start=start, end=end)
