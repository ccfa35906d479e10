"""Subscription filters (Backport ``backport-filter-criteria``): parsing them, and matching an event.

Matching is separate from delivery (as in HAPI): it runs inside the ingest transaction and only decides
which subscriptions get an outbox row, so that a platform hears only of the patients it follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from gateway.errors import FhirError

JSON = dict[str, Any]

#: Filter parameters each topic resource supports, and what they read.
SUPPORTED = {
    "Encounter": frozenset({"patient", "patient.identifier", "identifier", "class", "status"}),
}


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


def matches(filters: list[JSON], *, resource: JSON, patient: JSON | None) -> bool:
    """All filters must hold (AND), as in a FHIR search."""
    for f in filters:
        param, value = f["param"], f["value"]
        if param == "patient":
            ref = resource.get("subject", {}).get("reference", "")
            if ref != value and ref.rsplit("/", 1)[-1] != value:
                return False
        elif param == "patient.identifier":
            if patient is None or not _token_match(value, patient.get("identifier", [])):
                return False
        elif param == "identifier":
            if not _token_match(value, resource.get("identifier", [])):
                return False
        elif param == "class":
            if resource.get("class", {}).get("code") != value.rpartition("|")[2]:
                return False
        elif param == "status":
            if resource.get("status") != value:
                return False
        else:
            return False
    return True
