"""FHIR search on the index: parameters → criteria → a searchset Bundle (no SQL here: the repo runs it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from gateway.db.repo import ResourceRepo, StoredResource
from gateway.errors import FhirError
from gateway.fhir.capability import SEARCH_PARAMS

DEFAULT_COUNT = 50
MAX_COUNT = 500
CONTROL = frozenset({"_count", "_offset", "_format"})
#: Reference parameters and the resource type they point at (``patient=123`` means ``Patient/123``).
REFERENCE_TARGETS = {
    "patient": "Patient",
    "subject": "Patient",
    "part-of": "Encounter",
    "link": "Patient",
    "encounter": "Encounter",
}
#: Reference parameters whose value must name its type (a member may be a Practitioner or an Organization).
TYPED_REFERENCES = frozenset({"participant"})


def parse_search(rtype: str, params: list[tuple[str, str]]) -> list[tuple[str, str | None, str]]:
    """Unknown parameters are refused (400), not ignored: a mistyped filter must not return everyone."""
    known = {name for name, _, _ in SEARCH_PARAMS.get(rtype, [])}
    criteria: list[tuple[str, str | None, str]] = []
    for name, value in params:
        if name in CONTROL:
            continue
        if name not in known:
            raise FhirError(f"search parameter {name!r} is not supported for {rtype}", issue_code="not-supported")
        if not value:
            raise FhirError(f"search parameter {name!r} has no value", issue_code="invalid")
        if name == "event-type" and "," in value:
            # refused rather than read as one odd code: a list would silently find nothing
            raise FhirError(
                "event-type takes one code per search here (search ADM and SOR apart)", issue_code="not-supported"
            )
        criteria.append(_criterion(name, value))
    return criteria


def _criterion(name: str, value: str) -> tuple[str, str | None, str]:
    if name in ("identifier", "class", "participant.identifier", "patient.identifier", "event-type"):
        system, sep, code = value.rpartition("|")
        return name, (system if sep else None), code
    parts = value.rstrip("/").split("/")
    if name in REFERENCE_TARGETS:
        return name, None, f"{REFERENCE_TARGETS[name]}/{parts[-1]}"
    if name in TYPED_REFERENCES:
        return name, None, "/".join(parts[-2:])
    return name, None, value


def _int_param(params: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise FhirError(f"{name} must be an integer", issue_code="invalid") from exc
    if value < 0:
        raise FhirError(f"{name} must not be negative", issue_code="invalid")
    return min(value, maximum)


def search(repo: ResourceRepo, rtype: str, params: list[tuple[str, str]], *, base_url: str) -> dict[str, Any]:
    criteria = parse_search(rtype, params)
    flat = dict(params)
    count = _int_param(flat, "_count", DEFAULT_COUNT, MAX_COUNT)
    offset = _int_param(flat, "_offset", 0, 10**9)
    page, total = repo.search(rtype, criteria, limit=count, offset=offset)
    return searchset(rtype, page, total=total, base_url=base_url, params=params, count=count, offset=offset)


def searchset(
    rtype: str,
    page: list[StoredResource],
    *,
    total: int,
    base_url: str,
    params: list[tuple[str, str]],
    count: int,
    offset: int,
) -> dict[str, Any]:
    kept = [(k, v) for k, v in params if k not in ("_count", "_offset")]

    def link(relation: str, at: int) -> dict[str, str]:
        query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
        return {"relation": relation, "url": f"{base_url}/{rtype}?{query}"}

    links = [link("self", offset)]
    if offset + count < total:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {"fullUrl": f"{base_url}/{r.type}/{r.id}", "resource": r.content, "search": {"mode": "match"}} for r in page
        ],
    }


def history_bundle(versions: list[StoredResource], *, base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(versions),
        "entry": [
            {
                "fullUrl": f"{base_url}/{v.type}/{v.id}",
                "resource": v.content,
                "request": {"method": "PUT" if v.version_id > 1 else "POST", "url": f"{v.type}/{v.id}"},
                "response": {
                    "status": "200" if v.version_id > 1 else "201",
                    "etag": f'W/"{v.version_id}"',
                    "lastModified": v.content.get("meta", {}).get("lastUpdated"),
                },
            }
            for v in versions
        ],
    }
