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
    NO_CODE,
    PARAM_CODES,
    REFERENCE_TYPES,
    SYSTEM_CODES,
    id_key,
    id_of,
    indexed_param,
    lookup_forms,
    param_code,
    search_entries,
    stored_rows,
    stored_system,
    system_of,
    text_rows,
    value_key,
    value_of,
)
from gateway.fhir.capability import SEARCH_PARAMS, capability_statement
from gateway.mapping.ids import ADELI_SYSTEM, PS_OID, RPPS_SYSTEM

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
INDEX_FINGERPRINT = "ed0d66a712a9fdfa63a573bbbd25c3a5243588f6caa78d123bf2a3c8593a473a"  # 0009


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


#: ``PARAM_CODES`` as rows use them: a code is never given to another pair, nor a pair another code (rows
#: already stored would answer for the wrong parameter). New pairs are appended, here too.
FROZEN_CODES = {
    ("Patient", "identifier"): 1, ("Patient", "active"): 2, ("Patient", "link"): 3, ("Patient", "_security"): 4,
    ("Encounter", "identifier"): 5, ("Encounter", "subject"): 6, ("Encounter", "part-of"): 7,
    ("Encounter", "status"): 8, ("Encounter", "date"): 9, ("Encounter", "class"): 10,
    ("Practitioner", "identifier"): 11, ("PractitionerRole", "identifier"): 12,
    ("PractitionerRole", "practitioner"): 13, ("PractitionerRole", "organization"): 14,
    ("Organization", "identifier"): 15, ("Organization", "partof"): 16, ("CareTeam", "identifier"): 17,
    ("CareTeam", "subject"): 18, ("CareTeam", "participant"): 19, ("CareTeam", "_platform-source"): 20,
    ("CareTeam", "participant.identifier"): 21, ("CareTeam", "status"): 22, ("CareTeam", "date"): 23,
    ("CareTeam", "end"): 24, ("CareTeam", "date.end"): 25, ("CareTeam", "participant-start"): 26,
    ("CareTeam", "participant-end"): 27, ("CommunicationRequest", "identifier"): 28,
    ("CommunicationRequest", "subject"): 29, ("CommunicationRequest", "patient.identifier"): 30,
    ("CommunicationRequest", "event-type"): 31, ("CommunicationRequest", "encounter"): 32,
    ("CommunicationRequest", "status"): 33, ("Subscription", "identifier"): 34, ("Subscription", "status"): 35,
    ("Subscription", "criteria"): 36, ("Subscription", "url"): 37,
}  # fmt: skip


def test_parameter_codes_never_change_meaning() -> None:
    assert {pair: PARAM_CODES[pair] for pair in FROZEN_CODES} == FROZEN_CODES
    assert len(set(PARAM_CODES.values())) == len(PARAM_CODES) and min(PARAM_CODES.values()) > NO_CODE
    assert max(PARAM_CODES.values()) < 2**15  # a smallint


def test_every_searchable_pair_has_a_code() -> None:
    """Each entry the extraction gives for a type with searches, each declared parameter (through its
    alias's target) and each index-only one has a code: an entry without one would not be stored."""
    pairs = {(rtype, p) for rtype, params in extracted().items() if rtype in SEARCH_PARAMS for p in params}
    pairs |= {
        (rtype, indexed_param(rtype, name))
        for rtype, params in SEARCH_PARAMS.items()
        if rtype not in NOT_STORED
        for name, _, _ in params
        if name not in COLUMNS
    }
    pairs |= {(rtype, name) for rtype, names in INDEX_ONLY.items() for name in names}
    assert sorted(pairs - PARAM_CODES.keys()) == []
    assert param_code("Observation", "identifier") == NO_CODE
    assert stored_rows("Observation", "o", [("identifier", "s", "v")]) == {}


def _coded_text_rows(rtype: str, rid: str, entries: list[Any]) -> set[tuple[Any, ...]]:
    return {
        (param_code(r["type"], r["param"]), r["value"], r["id"], r["system"])
        for r in text_rows(rtype, rid, entries).values()
    }


def test_stored_rows_are_the_text_rows_coded_but_for_spare_forms() -> None:
    """What 0009 stores is what 0008 stored, (type, param) coded, less the idNatPs forms of national ids
    whose RPPS / ADELI form is stored (every RPPS member of a circle: two rows fewer each)."""
    spared = 0
    for resource in stored_resources():
        rtype, rid = resource["resourceType"], str(resource["id"])
        entries = search_entries(resource)
        text = _coded_text_rows(rtype, rid, entries)
        coded = {(r["code"], r["value"], r["id"], r["system"]) for r in stored_rows(rtype, rid, entries).values()}
        assert coded <= text
        nationals = {stored_system(RPPS_SYSTEM), stored_system(ADELI_SYSTEM)}
        for code, value, _, system in text - coded:
            assert system == stored_system(PS_OID) and value.isdigit(), (code, value)
            assert {(code, number, rid, n) for number in (value, value[1:]) for n in nationals} & coded
        spared += len(text - coded)
    assert spared >= 4


#: national ids of every shape, well-formed or not, and their near misses
_SYSTEMS = [RPPS_SYSTEM, ADELI_SYSTEM, PS_OID, "urn:oid:1.2.250.1.999.1", "http://other.test/sid"]
_NUMBERS = ["10003456789", "123456789", "810003456789", "0123456789", "012345678901", "8123456789", "123"]
_NUMBERS += ["\u0661" * 11, "1000345678X", "81000345678", "010003456789", ""]


def _old_finds(rows: set[tuple[Any, ...]], code: int, system: str | None, value: str) -> bool:
    """A search as 0008 answered it: some row of the code has the value (and the system, if given)."""
    return any(c == code and v == value[:255] and (system is None or s == stored_system(system)) for c, v, _, s in rows)


def _new_finds(rows: set[tuple[Any, ...]], code: int, param: str, system: str | None, value: str) -> bool:
    return any(_old_finds(rows, code, s, v) for s, v in lookup_forms(param, system, value))


def test_a_search_finds_what_it_found_when_every_form_was_stored() -> None:
    """Over professionals of every identifier shape (one or two per circle) and searches on every
    (system or none, value) those shapes and their forms give, a search on the stored rows through
    ``lookup_forms`` finds exactly the circles a search on every form found."""
    identifiers = [{"system": s, "value": v} for s in _SYSTEMS for v in _NUMBERS if v]
    values = set(_NUMBERS) | {prefix + n for n in _NUMBERS for prefix in ("8", "0")}
    searches = [(s, v) for s in [None, *_SYSTEMS] for v in sorted(values)]
    cases = 0
    for first, second in zip(identifiers, identifiers[3:] + identifiers[:3], strict=True):
        for rtype, param, resource in (
            ("CareTeam", "participant.identifier", {"resourceType": "CareTeam", "id": "c", "participant": [
                {"member": {"identifier": first}}, {"member": {"identifier": second}}]}),
            ("Practitioner", "identifier", {"resourceType": "Practitioner", "id": "p", "identifier": [first, second]}),
        ):  # fmt: skip
            entries = search_entries(resource)
            code = param_code(rtype, param)
            old = _coded_text_rows(rtype, resource["id"], entries)
            new = {(r["code"], r["value"], r["id"], r["system"]) for r in stored_rows(rtype, "x", entries).values()}
            for system, value in searches:
                assert _old_finds(old, code, system, value) == _new_finds(new, code, param, system, value), (
                    first, second, system, value)  # fmt: skip
                cases += 1
    assert cases > 10_000


HEX = "3d4cdbf614c4d04d89e32308c394cc2f"
ROLE = f"{HEX}-2e47ae12c6e2035a"
#: ids of every shape: deterministic ones, near misses (case, length, separator), texts of the stored
#: widths (16 and 24 bytes, ASCII or not), and hex texts whose bytes are a text id's
IDS = [HEX, ROLE, HEX.upper(), HEX[:31], HEX + "0", f"{HEX}_2e47ae12c6e2035a", f"{HEX}-2E47AE12C6E2035A", "p-1"]
IDS += ["a" * 16, "a" * 24, "a" * 15 + "\u00e9", "x" * 17, "\u00e9" * 8, "\u00e9" * 12, "-" * 64, bytes(16).hex()]
IDS += [(b"a" * 15 + b"\xff").hex(), (b"a" * 16).hex(), f"{(b'a' * 16).hex()}-{(b'a' * 8).hex()}"]


def test_ids_and_values_are_stored_compactly_and_read_back_whole() -> None:
    """PostgreSQL's ``search_index`` keys: a deterministic id in 16 bytes (a role's in 24), a reference to
    one in 17 (25); any other id or value as its text, never equal to another's key."""
    keys = [id_key(rid) for rid in IDS]
    assert len(set(keys)) == len(IDS) and [id_of(k) for k in keys] == IDS
    assert len(id_key(HEX)) == 16 and len(id_key(ROLE)) == 24
    assert [len(k) for k in keys[2:]].count(16) + [len(k) for k in keys[2:]].count(24) == 4  # the hex ones
    values = [f"{t}/{HEX}" for t in REFERENCE_TYPES] + [f"PractitionerRole/{ROLE}", f"Patient/{HEX.upper()}"]
    values += [f"Location/{HEX}", "Patient/p-1", "", "finished", HEX, "Patient/", f"Patient/{HEX}/_history/2"]
    values += ["\u00e9t\u00e9", "\x80", "urn:uuid:" + HEX]
    keys = [value_key(v) for v in values]
    assert len(set(keys)) == len(values) and [value_of(k) for k in keys] == values
    assert {len(k) for k in keys[: len(REFERENCE_TYPES)]} == {17} and len(value_key(f"PractitionerRole/{ROLE}")) == 25
