"""Subscription filters (Backport ``backport-filter-criteria``): parsing them, and matching an event.

Matching is separate from delivery (as in HAPI): it runs inside the ingest transaction and only decides
which subscriptions get an outbox row, so that a platform hears only of the patients it follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from gateway.errors import FhirError, UnsupportedSearchError
from gateway.subscriptions.nde import event_type_codes
from gateway.token_lists import split_tokens

JSON = dict[str, Any]

#: Filter parameters each topic resource supports.
SUPPORTED = {
    "Encounter": frozenset({"patient", "patient.identifier", "identifier", "class", "status", "facility"}),
    "Patient": frozenset({"patient", "patient.identifier", "identifier", "care-team-member"}),
    "CareTeam": frozenset({"patient", "patient.identifier", "care-team-member"}),
}
SUPPORTED["Encounter"] = SUPPORTED["Encounter"] | {"care-team-member"}
#: ANS NdE event declarations (flux 3): by TRE_R254 event type and by patient.
SUPPORTED["CommunicationRequest"] = frozenset({"event-type", "patient", "patient.identifier", "facility"})


@dataclass(frozen=True, slots=True)
class Filter:
    param: str
    value: str

    def as_json(self) -> JSON:
        return {"param": self.param, "value": self.value}


def parse_criteria(text: str, *, resource: str) -> list[Filter]:
    """``Encounter?patient.identifier=urn:oid:1.2|123&class=IMP`` → filters; unknown parameters are refused."""
    text = text.strip()
    if "?" in text:
        rtype, _, query = text.partition("?")
        if rtype and rtype != resource:
            raise UnsupportedSearchError(f"filter criteria apply to {resource}, not {rtype}")
    else:
        query = text
    filters = []
    for param, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if param not in SUPPORTED.get(resource, frozenset()):
            raise UnsupportedSearchError(f"filter parameter {param!r} is not supported for {resource}")
        if not value:
            raise FhirError(f"filter parameter {param!r} has no value")
        filters.append(Filter(param, value))
    return filters


def _token_match(value: str, identifiers: list[JSON]) -> bool:
    """FHIR token search, a comma-separated list meaning OR (an NdE Subject's INS or IPP)."""
    for token in split_tokens(value):
        system, sep, code = token.rpartition("|")
        for ident in identifiers:
            # "code" any system, "system|code" that system, "|code" no system at all
            if ident.get("value") == code and (not sep or (ident.get("system") or "") == system):
                return True
    return False


def _event_types(resource: JSON) -> list[JSON]:
    return [{"system": system, "value": code} for system, code in event_type_codes(resource)]


@dataclass(frozen=True, slots=True)
class Target:
    """What a filter is matched against: the focus, its patient, and the patients merged into him.

    After an A40 the survivor's events still reach subscriptions that named the merged patient
    (by reference or identifier): ``aliases`` carries the merged patients' references and identifiers.
    """

    resource: JSON
    patient: JSON | None
    alias_refs: tuple[str, ...] = ()
    alias_identifiers: tuple[JSON, ...] = ()
    #: identifiers (RPPS…) of the active members of the patient's care circle
    care_team_identifiers: tuple[JSON, ...] = ()

    def patient_ref(self) -> str:
        return patient_reference(self.resource)

    def patient_identifiers(self) -> list[JSON]:
        return [*((self.patient or {}).get("identifier", [])), *self.alias_identifiers]


def _patient(value: str, t: Target) -> bool:
    wanted = value if "/" in value else f"Patient/{value}"
    return wanted == t.patient_ref() or wanted in t.alias_refs


def _facility(value: str, t: Target) -> bool:
    """The sending facility (MSH-4) recorded in ``meta.source`` when the stay was first received."""
    source = str(t.resource.get("meta", {}).get("source", ""))
    return source.rsplit("/", 1)[-1] == value


def patient_reference(resource: JSON) -> str:
    """``Patient/<id>`` of the resource's patient. An NdE declaration's subject is its contained Patient,
    which keeps the gateway Patient's id as its local id: ``#<id>`` and ``Patient/<id>`` are one person."""
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id')}"
    ref = str((resource.get("subject") or {}).get("reference", ""))
    if ref.startswith("#") and resource.get("resourceType") == "CommunicationRequest":
        return f"Patient/{ref[1:]}"
    return ref


PREDICATES: dict[str, Callable[[str, Target], bool]] = {
    "patient": _patient,
    "patient.identifier": lambda value, t: _token_match(value, t.patient_identifiers()),
    "identifier": lambda value, t: _token_match(value, t.resource.get("identifier", [])),
    "class": lambda value, t: t.resource.get("class", {}).get("code") == value.rpartition("|")[2],
    "status": lambda value, t: t.resource.get("status") == value,
    "facility": _facility,
    "care-team-member": lambda value, t: _token_match(value, list(t.care_team_identifiers)),
    "event-type": lambda value, t: _token_match(value, _event_types(t.resource)),
}


def matches(filters: list[JSON], target: Target) -> bool:
    """All filters must hold (AND), as in a FHIR search; an unknown parameter never matches."""
    for f in filters:
        predicate = PREDICATES.get(str(f["param"]))
        if predicate is None or not predicate(str(f["value"]), target):
            return False
    return True
