"""Subscription filters (Backport ``backport-filter-criteria``): parsing them, and matching an event.

Matching is separate from delivery (as in HAPI): it runs inside the ingest transaction and only decides
which subscriptions get an outbox row, so that a platform hears only of the patients it follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from gateway.errors import FhirError

JSON = dict[str, Any]

#: Filter parameters each topic resource supports.
SUPPORTED = {
    "Encounter": frozenset({"patient", "patient.identifier", "identifier", "class", "status", "facility"}),
    "Patient": frozenset({"patient", "patient.identifier", "identifier", "care-team-member"}),
    "CareTeam": frozenset({"patient", "patient.identifier", "care-team-member"}),
}
SUPPORTED["Encounter"] = SUPPORTED["Encounter"] | {"care-team-member"}


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
            raise FhirError(f"filter criteria apply to {resource}, not {rtype}", issue_code="not-supported")
    else:
        query = text
    filters = []
    for param, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if param not in SUPPORTED.get(resource, frozenset()):
            raise FhirError(f"filter parameter {param!r} is not supported for {resource}", issue_code="not-supported")
        if not value:
            raise FhirError(f"filter parameter {param!r} has no value", issue_code="invalid")
        filters.append(Filter(param, value))
    return filters


def _token_match(value: str, identifiers: list[JSON]) -> bool:
    system, sep, code = value.rpartition("|")
    for ident in identifiers:
        # FHIR token search: "code" any system, "system|code" that system, "|code" no system at all
        if ident.get("value") == code and (not sep or (ident.get("system") or "") == system):
            return True
    return False


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
        if self.resource.get("resourceType") == "Patient":
            return f"Patient/{self.resource.get('id')}"
        return str(self.resource.get("subject", {}).get("reference", ""))

    def patient_identifiers(self) -> list[JSON]:
        return [*((self.patient or {}).get("identifier", [])), *self.alias_identifiers]


def _patient(value: str, t: Target) -> bool:
    wanted = value if "/" in value else f"Patient/{value}"
    return wanted == t.patient_ref() or wanted in t.alias_refs


def _facility(value: str, t: Target) -> bool:
    """The sending facility (MSH-4) recorded in ``meta.source`` when the stay was first received."""
    source = str(t.resource.get("meta", {}).get("source", ""))
    return source.rsplit("/", 1)[-1] == value


PREDICATES: dict[str, Callable[[str, Target], bool]] = {
    "patient": _patient,
    "patient.identifier": lambda value, t: _token_match(value, t.patient_identifiers()),
    "identifier": lambda value, t: _token_match(value, t.resource.get("identifier", [])),
    "class": lambda value, t: t.resource.get("class", {}).get("code") == value.rpartition("|")[2],
    "status": lambda value, t: t.resource.get("status") == value,
    "facility": _facility,
    "care-team-member": lambda value, t: _token_match(value, list(t.care_team_identifiers)),
}


def matches(filters: list[JSON], target: Target) -> bool:
    """All filters must hold (AND), as in a FHIR search; an unknown parameter never matches."""
    for f in filters:
        predicate = PREDICATES.get(str(f["param"]))
        if predicate is None or not predicate(str(f["value"]), target):
            return False
    return True
