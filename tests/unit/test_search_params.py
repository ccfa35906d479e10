"""Search parameters are declared once (gateway/fhir/capability.py): the index extracts exactly those.

The CapabilityStatement lists ``SEARCH_PARAMS``, the search refuses any other name, and
``gateway/db/indexing.py`` writes the entries searches look up. These tests tie the two: every declared
parameter is extracted from some resource the gateway holds, and every extracted one is declared (or is
one of the index's own entries, ``INDEX_ONLY``). A parameter added to one side only fails here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.db.indexing import INDEX_ONLY, search_entries
from gateway.fhir.capability import SEARCH_PARAMS, capability_statement

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden" / "adt"
#: Parameters answered from the resources table itself, not from the index.
COLUMNS = frozenset({"_id", "_lastUpdated"})
#: Resources no feed produces, written as the API receives them.
SUBSCRIPTION = {"resourceType": "Subscription", "id": "s", "status": "active", "criteria": "https://x.test/topic"}
#: No feed ends a circle yet (CDS ``end``): a circle as a platform may come to read it, ended.
ENDED_CIRCLE = {"resourceType": "CareTeam", "id": "c", "period": {"start": "2026-01-01", "end": "2026-06-30"}}
#: Topics are served from code (gateway/fhir/topics.py), not from the store.
NOT_STORED = frozenset({"Basic"})

JSON = dict[str, Any]


def stored_resources() -> list[JSON]:
    out = [SUBSCRIPTION, ENDED_CIRCLE]
    for golden in sorted(GOLDEN_DIR.glob("*.json")):
        out += json.loads(golden.read_text(encoding="utf-8"))["resources"]
    return out


def extracted() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for resource in stored_resources():
        found.setdefault(resource["resourceType"], set()).update(p for p, _, _ in search_entries(resource))
    return found


def test_every_declared_parameter_is_indexed() -> None:
    found = extracted()
    missing = {
        rtype: sorted(names)
        for rtype, params in SEARCH_PARAMS.items()
        if rtype not in NOT_STORED and (names := {n for n, _, _ in params} - COLUMNS - found.get(rtype, set()))
    }
    assert not missing, f"declared but never indexed (a search on them finds nothing): {missing}"


def test_every_indexed_parameter_is_declared() -> None:
    undeclared = {
        rtype: sorted(names)
        for rtype, params in extracted().items()
        if (names := params - {n for n, _, _ in SEARCH_PARAMS.get(rtype, [])} - INDEX_ONLY.get(rtype, frozenset()))
    }
    assert not undeclared, f"indexed but not in the CapabilityStatement: {undeclared}"


def test_capability_statement_lists_exactly_the_declaration() -> None:

    statement = capability_statement(base_url="http://gw.test/fhir", now=datetime(2030, 1, 1, tzinfo=UTC))
    listed = {r["type"]: [p["name"] for p in r["searchParam"]] for r in statement["rest"][0]["resource"]}
    assert listed == {rtype: [n for n, _, _ in params] for rtype, params in SEARCH_PARAMS.items()}
