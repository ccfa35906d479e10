"""Search parameters are declared once (gateway/fhir/capability.py): the index extracts exactly those.

The CapabilityStatement lists ``SEARCH_PARAMS``, the search refuses any other name, and
``gateway/db/indexing.py`` writes the entries searches look up. These tests tie the two: every declared
parameter is extracted from some resource the gateway holds, and every extracted one is declared (or is
one of the index's own entries, ``INDEX_ONLY``). A parameter added to one side only fails here.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.db.indexing import (
    ALIASES,
    DATE_PARAMS,
    INDEX_ONLY,
    SYSTEM_CODES,
    indexed_param,
    search_entries,
    stored_rows,
    stored_system,
    system_of,
)
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
        if rtype not in NOT_STORED
        and (names := {n for n, _, _ in params if indexed_param(rtype, n) not in found.get(rtype, set())} - COLUMNS)
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


def test_aliases_are_declared_and_never_stored_under_their_own_name() -> None:
    """An alias is searched through its target's entries: both are declared, the target is extracted, and
    the alias itself never is (it would be stored twice, which is what aliases save)."""
    found = extracted()
    for rtype, aliases in ALIASES.items():
        declared = {n for n, _, _ in SEARCH_PARAMS[rtype]}
        for alias, target in aliases.items():
            assert {alias, target} <= declared, (rtype, alias, target)
            assert target in found[rtype] and alias not in found[rtype], (rtype, alias, target)


def test_date_parameters_are_the_declared_dates() -> None:
    """``DATE_PARAMS`` are exactly the date parameters: stored keyed by owner (compared for a resource
    found, never looked up by instant); any other kind is looked up by value."""
    kinds: dict[str, set[str]] = {}
    for params in SEARCH_PARAMS.values():
        for name, kind, _ in params:
            kinds.setdefault(name, set()).add(kind)
    dates = {name for name, found in kinds.items() if found == {"date"}} - COLUMNS
    assert all("date" not in found for name, found in kinds.items() if name not in dates | COLUMNS)
    assert dates | {"date", "date.end"} == DATE_PARAMS  # the index's own: Encounter's sort key, a period's end


#: What the extraction gives for every golden resource (sha256 of their stored rows). Stores hold entries
#: written by the extraction of their time, and a write deletes only what the current one extracts from
#: the version it replaces (``ResourceRepo._reindex``): a change here leaves stale entries behind unless a
#: migration rebuilds the index.
INDEX_FINGERPRINT = "fb0a900643a137b75464e5197e73c5cc1eb28e4de1c5173bdd82723820937f80"


def test_a_change_to_the_extraction_comes_with_a_reindex() -> None:
    rows = sorted(
        json.dumps(row, sort_keys=True)
        for resource in stored_resources()
        for row in stored_rows(resource["resourceType"], str(resource["id"]), search_entries(resource)).values()
    )
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    assert digest == INDEX_FINGERPRINT, (
        "what gateway/db/indexing.py extracts changed: add a migration that empties search_index and calls "
        f"reindex_all (see 0006_compact_store), then pin INDEX_FINGERPRINT = {digest!r}"
    )


def test_systems_are_stored_under_their_codes_and_read_back_whole() -> None:
    assert len(set(SYSTEM_CODES)) == len(SYSTEM_CODES) <= 26
    for prefix in SYSTEM_CODES:
        for system in (prefix, prefix + "1/x"):
            stored = stored_system(system)
            assert stored.startswith("~") and len(stored) == len(system) - len(prefix) + 2
            assert system_of(stored) == system and stored_system(stored) == stored  # searched twice: same
    # the longest listed prefix wins, and a system under none is stored as it is
    assert stored_system("urn:oid:1.2.250.1.71.4.2.1") == "~C"
    assert stored_system("urn:oid:1.2.250.1.999.1") == "~E999.1"
    assert stored_system("urn:oid:2.16.840.1") == "~F2.16.840.1"
    assert stored_system("http://other.test/sid") == system_of("http://other.test/sid") == "http://other.test/sid"
