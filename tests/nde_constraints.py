"""The ANS NdE 3.0.0 profile constraints (``input/fsh/``), written out independently of the gateway's code.

Every NdE resource the gateway produces goes through :func:`check`: each cardinality, fixed value,
required extension, value type, reference target and the ``event-subject`` invariant of
``NdE_SubscriptionNdE``, ``NdE_EventDeclarationNdE`` and ``NdE_NotificationRequestNdE``, plus R4
validity (fhir.resources). The guide's own examples pass; the tests break them one rule at a time.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

JSON = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
SD = "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition"
SUBSCRIPTION, DECLARATION, ORDER = (
    f"{SD}/nde-subscription",
    f"{SD}/nde-eventdeclaration",
    f"{SD}/nde-notificationrequest",
)
TRE_R254 = "https://mos.esante.gouv.fr/NOS/TRE_R254-TypeEvenement/FHIR/TRE-R254-TypeEvenement"
FR_CORE = "https://hl7.fr/ig/fhir/core/StructureDefinition"
#: FR Core profiles by resource type (the profiles NdE's references and contained elements allow).
FR_PROFILES = {
    "Patient": {f"{FR_CORE}/fr-core-patient", f"{FR_CORE}/fr-core-patient-ins"},
    "Practitioner": {f"{FR_CORE}/fr-core-practitioner"},
    "Organization": {f"{FR_CORE}/fr-core-organization"},
    "RelatedPerson": {f"{FR_CORE}/fr-core-related-person"},
}


def _tre_r254() -> set[str]:
    with (ROOT / "mappings" / "codes" / "TRE_R254_TypeEvenement.csv").open(encoding="utf-8") as fh:
        return {row["code"] for row in csv.DictReader(fh)}


def _exts(element: JSON, name: str) -> list[JSON]:
    return [e for e in element.get("extension", []) if e.get("url") == f"{SD}/{name}"]


def _card(element: JSON, name: str, low: int, high: int, where: str) -> list[str]:
    n = len(_exts(element, name))
    return [] if low <= n <= high else [f"{where}.extension[{name}] is {low}..{high}, found {n}"]


def _value(element: JSON, name: str, kind: str, where: str) -> list[str]:
    return [f"{where}.extension[{name}] needs value{kind}" for e in _exts(element, name) if f"value{kind}" not in e]


def _contained(resource: JSON, ref: str | None) -> JSON | None:
    if not ref or not ref.startswith("#"):
        return None
    return next((c for c in resource.get("contained", []) if c.get("id") == ref[1:]), None)


def _target(resource: JSON, ref: str | None, types: set[str], where: str) -> list[str]:
    """Aggregation contained, a type the element allows, claiming that type's FR Core profile."""
    found = _contained(resource, ref)
    if found is None:
        return [f"{where} {ref!r} is not a reference to a contained resource"]
    rtype = str(found.get("resourceType"))
    if rtype not in types:
        return [f"{where} targets a {rtype}, allowed: {sorted(types)}"]
    profiles = set((found.get("meta") or {}).get("profile") or [])
    if not profiles & FR_PROFILES[rtype]:
        return [f"{where}: contained {rtype} claims no FR Core profile ({sorted(FR_PROFILES[rtype])})"]
    return []


def _event_type(element: JSON, where: str) -> list[str]:
    out = _value(element, "event-type", "CodeableConcept", where)
    for ext in _exts(element, "event-type"):
        codings = (ext.get("valueCodeableConcept") or {}).get("coding") or []
        if not any(c.get("system") == TRE_R254 and c.get("code") in _tre_r254() for c in codings):
            out.append(f"{where}.extension[EventType] has no TRE_R254 (JDV_J46) coding")
    return out


def _ref(element: Any) -> str | None:
    if isinstance(element, list):
        element = element[0] if element else None
    return (element or {}).get("reference")


def _exactly(resource: JSON, path: str, low: int, high: int) -> list[str]:
    value = resource.get(path)
    n = len(value) if isinstance(value, list) else int(value is not None)
    return [] if low <= n <= high else [f"{path} is {low}..{high}, found {n}"]


def _r4(resource: JSON) -> list[str]:
    try:
        get_fhir_model_class(str(resource["resourceType"])).model_validate(resource)
    except ValidationError as exc:
        return [f"not valid R4: {e['loc']}: {e['msg']}" for e in exc.errors()]
    return []


def _event_subject(resource: JSON) -> list[str]:
    return [] if bool(resource.get("subject")) != bool(resource.get("about")) else ["event-subject: subject xor about"]


def subscription_problems(sub: JSON) -> list[str]:
    out = _r4(sub) + _exactly(sub, "contained", 1, 10**6)
    for item in sub.get("contained", []):
        if item.get("resourceType") not in FR_PROFILES:
            out.append(f"contained {item.get('resourceType')} is not an allowed FR Core type")
    where = "Subscription"
    for name, low in (("subscription-date", 0), ("start", 1), ("subject", 1), ("declarant", 1)):
        out += _card(sub, name, low, 1, where)
    out += _card(sub, "event-type", 1, 1, where) + _card(sub, "subscriber", 1, 1, where)
    out += _value(sub, "subscription-date", "DateTime", where) + _value(sub, "start", "DateTime", where)
    out += _event_type(sub, where)
    allowed = {
        "subject": {"Patient"},
        "declarant": {"Organization", "Practitioner"},
        "subscriber": {"Patient", "Practitioner", "Organization", "RelatedPerson"},
    }
    for name, types in allowed.items():
        for ext in _exts(sub, name):
            out += _target(sub, (ext.get("valueReference") or {}).get("reference"), types, f"{where}.{name}")
    if not str(sub.get("criteria", "")).startswith("CommunicationRequest?"):
        out.append("criteria is not a search on CommunicationRequest")
    if SUBSCRIPTION not in (sub.get("meta") or {}).get("profile", []):
        out.append("meta.profile does not claim nde-subscription")
    return out


def declaration_problems(cr: JSON) -> list[str]:
    where = "CommunicationRequest"
    out = _r4(cr) + _event_subject(cr) + _exactly(cr, "contained", 1, 10**6)
    out += _card(cr, "event-type", 1, 1, where) + _card(cr, "event-time", 1, 1, where)
    out += _event_type(cr, where) + _value(cr, "event-time", "DateTime", where)
    out += _exactly(cr, "subject", 1, 1) + _target(cr, _ref(cr.get("subject")), {"Patient"}, "subject")
    out += _exactly(cr, "payload", 1, 1)
    out += _exactly(cr, "requester", 1, 1)
    out += _target(cr, _ref(cr.get("requester")), {"Organization", "Practitioner"}, "requester")
    if DECLARATION not in (cr.get("meta") or {}).get("profile", []):
        out.append("meta.profile does not claim nde-eventdeclaration")
    return out


def order_problems(cr: JSON) -> list[str]:
    where = "CommunicationRequest"
    out = _r4(cr) + _event_subject(cr) + _exactly(cr, "contained", 1, 10**6)
    out += _card(cr, "event-emission-time", 0, 1, where) + _card(cr, "event-time", 0, 1, where)
    out += _card(cr, "event-type", 1, 1, where) + _event_type(cr, where)
    out += _value(cr, "event-emission-time", "DateTime", where) + _value(cr, "event-time", "DateTime", where)
    out += _exactly(cr, "basedOn", 1, 1)
    if "Subscription/" not in str(_ref(cr.get("basedOn"))):
        out.append("basedOn does not reference a Subscription")
    out += _exactly(cr, "medium", 1, 1)
    out += _exactly(cr, "subject", 1, 1) + _target(cr, _ref(cr.get("subject")), {"Patient"}, "subject")
    out += _exactly(cr, "payload", 1, 1)
    out += _exactly(cr, "requester", 1, 1)
    out += _target(cr, _ref(cr.get("requester")), {"Organization", "Practitioner"}, "requester")
    out += _exactly(cr, "recipient", 1, 1)
    recipients = cr.get("recipient") or [{}]
    types = {"Organization", "Practitioner", "Patient", "RelatedPerson"}
    out += _target(cr, _ref(recipients), types, "recipient")
    out += _card(recipients[0], "recipient-endpoint", 1, 1, "recipient")
    out += _value(recipients[0], "recipient-endpoint", "Url", "recipient")
    if ORDER not in (cr.get("meta") or {}).get("profile", []):
        out.append("meta.profile does not claim nde-notificationrequest")
    return out


CHECKS: dict[str, Callable[[JSON], list[str]]] = {
    SUBSCRIPTION: subscription_problems,
    DECLARATION: declaration_problems,
    ORDER: order_problems,
}


def check(resource: JSON) -> None:
    """Fail with every NdE constraint the resource breaks, by the NdE profile it claims."""
    profiles = [p for p in (resource.get("meta") or {}).get("profile", []) if p in CHECKS]
    assert profiles, f"{resource.get('resourceType')} claims no NdE profile"
    found = CHECKS[profiles[0]](resource)
    assert not found, "NdE constraint(s) broken:\n  " + "\n  ".join(found)
