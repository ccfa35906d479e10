"""FHIR search on the index: parameters → criteria → a searchset Bundle (no SQL here: the repo runs it)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from gateway.db.indexing import PERIOD_END, instant_bounds, instant_text
from gateway.db.repo import ResourceRepo, StoredResource, fhir_instant
from gateway.errors import FhirError, UnsupportedSearchError
from gateway.fhir.capability import INCLUDES, SEARCH_PARAMS

JSON = dict[str, Any]
DEFAULT_COUNT = 50
MAX_COUNT = 500
#: Result parameters: they shape the answer, they do not filter (``_lastUpdated`` filters, on its own column).
#: ``_totalMethod`` is HAPI's hint that fhirpy's ``count()`` sends: we always count exactly, so it is moot.
CONTROL = frozenset(
    {"_count", "_offset", "_format", "_pretty", "_summary", "_elements", "_sort", "_total", "_lastUpdated"}
    | {"_totalMethod", "_include", "_include:iterate"}
)
#: Parameters ``_sort`` takes besides ``_lastUpdated`` and ``_id``: the date parameters, indexed as ISO text.
SORTABLE = {"Encounter": frozenset({"date"})}
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})
#: ``_lastUpdated`` prefixes → the bounds of the value's range they keep (ge low, lt high).
PREFIXES = ("eq", "ge", "gt", "le", "lt", "sa", "eb")
#: Reference parameters and the resource type they point at (``patient=123`` means ``Patient/123``).
REFERENCE_TARGETS = {
    "patient": "Patient",
    "subject": "Patient",
    "part-of": "Encounter",
    "link": "Patient",
    "encounter": "Encounter",
}
#: Date comparisons: prefix → (indexed instant ``ge`` the range's low or high) or (``lt`` …). A date
#: parameter's entries are instants (its value's first one), so ``ge2026-03`` keeps March onwards.
POINT_PREFIXES: dict[str, list[tuple[str, str]]] = {
    "eq": [("ge", "low"), ("lt", "high")],
    "ap": [("ge", "low"), ("lt", "high")],
    "ge": [("ge", "low")],
    "gt": [("ge", "high")],
    "sa": [("ge", "high")],
    "le": [("lt", "high")],
    "lt": [("lt", "low")],
    "eb": [("lt", "low")],
}
#: ``date`` on a period (CareTeam): its start under ``date``, the instant it stops covering under
#: ``date.end`` (open: never), so overlap is two comparisons: (param, op, bound of the searched range).
PERIOD_PREFIXES: dict[str, list[tuple[str, str, str]]] = {
    "eq": [("date", "lt", "high"), (PERIOD_END, "ge", "low")],
    "ap": [("date", "lt", "high"), (PERIOD_END, "ge", "low")],
    "ge": [(PERIOD_END, "ge", "low")],
    "gt": [(PERIOD_END, "ge", "high")],
    "le": [("date", "lt", "high")],
    "lt": [("date", "lt", "low")],
    "sa": [("date", "ge", "high")],
    "eb": [(PERIOD_END, "lt", "low")],
}
#: Parameters searched as a period rather than as instants.
PERIOD_PARAMS = {("CareTeam", "date")}
#: Reference parameters whose value must name its type (a member may be a Practitioner or an Organization).
TYPED_REFERENCES = frozenset({"participant"})
REFERENCE_TARGETS |= {"practitioner": "Practitioner", "organization": "Organization", "partof": "Organization"}


def _types(rtype: str) -> dict[str, str]:
    return {name: kind for name, kind, _ in SEARCH_PARAMS.get(rtype, [])}


def parse_dates(rtype: str, params: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Date parameters (``start=ge2026-03``) → (indexed param, ``ge`` | ``lt``, UTC instant text), AND-ed."""
    kinds = _types(rtype)
    out: list[tuple[str, str, str]] = []
    for name, value in params:
        if name.startswith("_") or kinds.get(name) != "date":
            continue
        prefix = value[:2] if value[:2].isalpha() else "eq"
        text = value[2:] if value[:2].isalpha() else value
        if prefix not in POINT_PREFIXES:
            raise UnsupportedSearchError(f"{name}: prefix {prefix!r} is not supported")
        low, high = _instant_range(text, name)
        bound = {"low": instant_text(low), "high": instant_text(high)}
        if (rtype, name) in PERIOD_PARAMS:
            out += [(param, op, bound[edge]) for param, op, edge in PERIOD_PREFIXES[prefix]]
        else:
            out += [(name, op, bound[edge]) for op, edge in POINT_PREFIXES[prefix]]
    return out


def parse_search(rtype: str, params: list[tuple[str, str]]) -> list[tuple[str, str | None, str]]:
    """Unknown parameters are refused (400), not ignored: a mistyped filter must not return everyone.
    Date parameters are left to :func:`parse_dates`."""
    kinds = _types(rtype)
    criteria: list[tuple[str, str | None, str]] = []
    for name, value in params:
        if name in CONTROL:
            continue
        if name not in kinds:
            raise UnsupportedSearchError(f"search parameter {name!r} is not supported for {rtype}")
        if kinds[name] == "date":
            continue
        if not value:
            raise FhirError(f"search parameter {name!r} has no value")
        if name == "event-type" and "," in value:
            # refused rather than read as one odd code: a list would silently find nothing
            raise UnsupportedSearchError("event-type takes one code per search here (search ADM and SOR apart)")
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


def parse_includes(rtype: str, params: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """``_include`` / ``_include:iterate`` values → (``Type:param``, iterate?); unknown ones are refused."""
    allowed = INCLUDES.get(rtype, [])
    out = []
    for name, value in params:
        if name not in ("_include", "_include:iterate"):
            continue
        if value not in allowed:
            raise UnsupportedSearchError(
                f"_include {value!r} is not supported for {rtype}" + (f" (use {', '.join(allowed)})" if allowed else "")
            )
        out.append((value, name == "_include:iterate"))
    return out


#: ``_include`` → (source type, the elements of it holding the references to follow).
INCLUDE_PATHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CareTeam:participant": ("CareTeam", ("participant", "member")),
    "PractitionerRole:practitioner": ("PractitionerRole", ("practitioner",)),
    "PractitionerRole:organization": ("PractitionerRole", ("organization",)),
}


def _references_at(resource: JSON, path: tuple[str, ...]) -> list[str]:
    nodes: list[Any] = [resource]
    for key in path:
        nodes = [n for node in nodes for n in _as_list(node.get(key) if isinstance(node, dict) else None)]
    return [str(n["reference"]) for n in nodes if isinstance(n, dict) and "/" in str(n.get("reference", ""))]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def included(repo: ResourceRepo, page: list[StoredResource], includes: list[tuple[str, bool]]) -> list[StoredResource]:
    """The resources the page's references name, read through the caller's repo (its access policy
    applies); an iterated include also follows the included ones (CareTeam → PractitionerRole →
    Practitioner). Each resource once, matches excluded."""
    seen = {(r.type, r.id) for r in page}
    out: list[StoredResource] = []
    frontier = list(page)
    # one pass for plain includes, then again over what was included for the iterated ones
    for round_ in range(2):
        found: list[StoredResource] = []
        for value, iterate in includes:
            if round_ and not iterate:
                continue
            source, path = INCLUDE_PATHS[value]
            for resource in (r for r in frontier if r.type == source):
                for ref in _references_at(resource.content, path):
                    rtype, _, rid = ref.partition("/")
                    if (rtype, rid) in seen:
                        continue
                    seen.add((rtype, rid))
                    target = repo.get(rtype, rid)
                    if target is not None and not target.deleted:
                        found.append(target)
        out += found
        frontier = found
    return out


def _int_param(params: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise FhirError(f"{name} must be an integer") from exc
    if value < 0:
        raise FhirError(f"{name} must not be negative")
    return min(value, maximum)


def parse_sort(rtype: str, value: str | None) -> list[tuple[str, bool]]:
    """``_sort=-_lastUpdated,_id``: (name, descending) keys; an unknown key is refused, not ignored."""
    if not value:
        return []
    allowed = {"_lastUpdated", "_id"} | SORTABLE.get(rtype, frozenset())
    keys = []
    for part in (p.strip() for p in value.split(",")):
        name = part.removeprefix("-")
        if name not in allowed:
            raise UnsupportedSearchError(
                f"_sort on {name!r} is not supported for {rtype} (use {', '.join(sorted(allowed))})"
            )
        keys.append((name, part.startswith("-")))
    return keys


def _instant_range(text: str, name: str = "_lastUpdated") -> tuple[datetime, datetime]:
    """A FHIR date or dateTime as the [start, end) range of its precision (``2026-03`` is all of March)."""
    bounds = instant_bounds(text)
    if bounds is None:
        raise FhirError(f"{name}: {text!r} is not a FHIR date or dateTime")
    return bounds


def parse_last_updated(values: list[str]) -> list[tuple[str, datetime]]:
    """``_lastUpdated=ge2026-03-01&_lastUpdated=lt2026-04`` → [("ge", …), ("lt", …)] bounds (AND-ed)."""
    bounds: list[tuple[str, datetime]] = []
    for value in values:
        prefix = value[:2] if value[:2] in PREFIXES else "eq"
        low, high = _instant_range(value[2:] if value[:2] in PREFIXES else value)
        if prefix in ("eq", "ge"):
            bounds.append(("ge", low))
        if prefix in ("gt", "sa"):
            bounds.append(("ge", high))
        if prefix in ("eq", "le"):
            bounds.append(("lt", high))
        if prefix in ("lt", "eb"):
            bounds.append(("lt", low))
    return bounds


def _total_mode(value: str | None) -> str:
    if value is None:
        return "accurate"
    if value not in TOTAL_MODES:
        raise FhirError(f"_total must be one of {', '.join(sorted(TOTAL_MODES))}")
    return value


def search(repo: ResourceRepo, rtype: str, params: list[tuple[str, str]], *, base_url: str) -> dict[str, Any]:
    """A searchset. ``_summary=count`` answers the total alone; ``_total=none`` skips counting."""
    criteria = parse_search(rtype, params)
    dates = parse_dates(rtype, params)
    includes = parse_includes(rtype, params)
    flat = dict(params)
    count = _int_param(flat, "_count", DEFAULT_COUNT, MAX_COUNT)
    offset = _int_param(flat, "_offset", 0, 10**9)
    order = parse_sort(rtype, flat.get("_sort"))
    updated = parse_last_updated([v for k, v in params if k == "_lastUpdated"])
    total_mode = _total_mode(flat.get("_total"))
    only_count = flat.get("_summary") == "count"
    page, total = repo.search(
        rtype,
        criteria,
        limit=0 if only_count else count,
        offset=offset,
        count=only_count or total_mode != "none",
        order=order,
        updated=updated,
        dates=dates,
    )
    bundle = searchset(rtype, page, total=total, base_url=base_url, params=params, count=count, offset=offset)
    if includes and not only_count:
        bundle["entry"] += [
            {"fullUrl": f"{base_url}/{r.type}/{r.id}", "resource": r.content, "search": {"mode": "include"}}
            for r in included(repo, page, includes)
        ]
    if total_mode == "none" and not only_count:
        bundle.pop("total")
        if len(page) == count:  # without a total, a full page may have a next one
            bundle["link"].append(_link(rtype, base_url, params, "next", count=count, at=offset + count))
    if only_count:
        bundle["link"] = bundle["link"][:1]
    return bundle


def _link(
    rtype: str, base_url: str, params: list[tuple[str, str]], relation: str, *, count: int, at: int
) -> dict[str, str]:
    kept = [(k, v) for k, v in params if k not in ("_count", "_offset")]
    query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
    return {"relation": relation, "url": f"{base_url}/{rtype}?{query}"}


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
    def link(relation: str, at: int) -> dict[str, str]:
        return _link(rtype, base_url, params, relation, count=count, at=at)

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


def _history_entry(v: StoredResource, *, base_url: str) -> dict[str, Any]:
    """A version as a history entry; a deletion is a DELETE with no resource (its body is the previous one)."""
    if v.deleted:
        return {
            "fullUrl": f"{base_url}/{v.type}/{v.id}",
            "request": {"method": "DELETE", "url": f"{v.type}/{v.id}"},
            "response": {
                "status": "204",
                "etag": f'W/"{v.version_id}"',
                "lastModified": fhir_instant(v.last_updated),
            },
        }
    return {
        "fullUrl": f"{base_url}/{v.type}/{v.id}",
        "resource": v.content,
        "request": {"method": "PUT" if v.version_id > 1 else "POST", "url": f"{v.type}/{v.id}"},
        "response": {
            "status": "200" if v.version_id > 1 else "201",
            "etag": f'W/"{v.version_id}"',
            "lastModified": v.content.get("meta", {}).get("lastUpdated"),
        },
    }


def history_bundle(versions: list[StoredResource], *, base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(versions),
        "entry": [_history_entry(v, base_url=base_url) for v in versions],
    }
