"""What a client asked to see of a resource: ``_summary`` and ``_elements`` (pure; no HTTP here).

The summary elements of each type come from the fhir.resources R4B models (``summary_element_property``),
so the list is the specification's, not ours. A trimmed resource carries the ``SUBSETTED`` tag, as the
specification asks, so that nobody takes it for the whole resource.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from gateway.errors import FhirError

JSON = dict[str, Any]
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
#: Kept by every subset: without them the result is not a resource.
ALWAYS = frozenset({"resourceType", "id", "meta"})
SUMMARY_MODES = frozenset({"true", "false", "text", "data", "count"})


@functools.cache
def summary_elements(rtype: str) -> frozenset[str]:
    """The elements the specification marks ``isSummary`` for ``rtype`` (empty for an unknown type)."""
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{rtype.lower()}")
    except ImportError:
        return frozenset()
    model = getattr(module, rtype, None)
    if model is None:
        return frozenset()
    names = set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("summary_element_property"):
            names.add(field.alias or name)
    # Choice types ([x]) appear as one field per type; the JSON names are the field names.
    return frozenset(names)


def _tagged(resource: JSON, keep: Callable[[str], bool]) -> JSON:
    out = {k: v for k, v in resource.items() if k in ALWAYS or keep(k)}
    if len(out) == len(resource):
        return out
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out


def summarize(resource: JSON, mode: str) -> JSON:
    """``_summary=true|text|data|false`` applied to one resource (``count`` is the search's business)."""
    rtype = str(resource.get("resourceType", ""))
    if mode in {"false", "count"}:
        return resource
    if mode == "data":
        return _tagged(resource, lambda k: k != "text")
    if mode == "text":
        return _tagged(resource, lambda k: k == "text")
    summary = summary_elements(rtype)
    if not summary:  # a type the models do not know (Bundle parts, Parameters): leave it whole
        return resource
    return _tagged(resource, lambda k: k.lstrip("_") in summary)


def select_elements(resource: JSON, elements: frozenset[str]) -> JSON:
    """``_elements=a,b``: the named top-level elements (and their ``_a`` extensions) plus id and meta.

    ``_elements=-a,b`` (fhirpy's ``elements(..., exclude=True)``, as HAPI takes it) keeps all but those.
    """
    excluded = frozenset(e[1:] for e in elements if e.startswith("-"))
    if excluded:
        return _tagged(resource, lambda k: k.lstrip("_") not in excluded)
    return _tagged(resource, lambda k: k.lstrip("_") in elements)


def parse_summary(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in SUMMARY_MODES:
        raise FhirError(f"_summary must be one of {', '.join(sorted(SUMMARY_MODES))}")
    return value


def parse_elements(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    exclude = value.startswith("-")
    names = [part.strip().split(".")[-1] for part in value.removeprefix("-").split(",") if part.strip()]
    return frozenset(f"-{n}" if exclude else n for n in names) or None


def shape(body: JSON, *, summary: str | None, elements: frozenset[str] | None) -> JSON:
    """Apply ``_summary``/``_elements`` to a resource, or to each matched resource of a searchset.

    OperationOutcomes and the SubscriptionStatus Parameters of a Bundle are never trimmed: they explain
    the answer rather than being the data asked for.
    """
    if summary in (None, "false") and elements is None:
        return body

    def one(resource: JSON) -> JSON:
        if resource.get("resourceType") in ("OperationOutcome", "Parameters"):
            return resource
        if elements is not None:
            return select_elements(resource, elements)
        return summarize(resource, summary or "false")

    if body.get("resourceType") != "Bundle":
        return one(body)
    entries = []
    for entry in body.get("entry", []):
        matched = (entry.get("search") or {}).get("mode", "match") == "match"
        if isinstance(entry.get("resource"), dict) and matched:
            entries.append({**entry, "resource": one(entry["resource"])})
        else:
            entries.append(entry)
    return {**body, "entry": entries} if "entry" in body else body
