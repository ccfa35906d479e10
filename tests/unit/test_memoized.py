"""The hot path's small memoized functions give what they compute, for short and for long arguments
(long ones are computed each time, so that a hostile field is never kept by a cache)."""

from __future__ import annotations

import hashlib
from datetime import datetime

import pytest

from gateway.db import indexing
from gateway.db.indexing import WIDTH, search_entries, stored_rows, stored_system
from gateway.hl7.er7 import Path
from gateway.mapping.engine import DEATH_RULE_MEMO_SIZE, death_rule
from gateway.mapping.ids import MEMO_LONGEST, resource_id
from gateway.mapping.transforms import LOCAL_SID, local_system, parse_dtm

LONG = "9" * (MEMO_LONGEST + 1)


def test_resource_id_is_the_digest_of_its_key_short_or_long() -> None:
    for key in ("urn:oid:1.2.250.1.999|480001", f"urn:oid:1.2.250.1.999|{LONG}"):
        expected = hashlib.sha256(f"Patient\x1f{key}".encode()).hexdigest()[:32]
        assert resource_id("Patient", key) == resource_id("Patient", key) == expected


def test_a_dtm_reads_the_same_twice_and_a_long_text_is_no_date() -> None:
    first, again = parse_dtm("202603010800"), parse_dtm("202603010800")
    assert first == again and first is not None
    assert first[0].replace(tzinfo=None) == datetime(2026, 3, 1, 8, 0) and first[1] == 12
    assert parse_dtm(f"2026{LONG}") is None


def test_local_systems_are_slugged_short_or_long() -> None:
    assert local_system("uf", "CHU Nord", "1.2.3") == f"{LOCAL_SID}/uf/CHU-Nord/1.2.3"
    assert local_system("uf", f"A {LONG}") == f"{LOCAL_SID}/uf/A-{LONG}"


def test_stored_systems_and_dates_are_coded_short_or_long() -> None:
    assert stored_system("urn:oid:1.2.250.1.71.4.2.1") == "~C"
    assert stored_system(f"urn:oid:{LONG}") == f"~F{LONG}"
    team = {"resourceType": "CareTeam", "id": "t", "period": {"start": "2026-03-01T08:00:00+01:00"}}
    long_start = {**team, "period": {"start": f"2026-03-01T08:00:00{LONG}"}}
    assert ("date", "", "2026-03-01T07:00:00.000000Z") in search_entries(team)
    assert not [e for e in search_entries(long_start) if e[0] == "date"]


def test_death_rules_read_as_unmemoized_and_the_memo_is_bounded() -> None:
    death_rule.cache_clear()
    codes = [f"{seg}-{n}{comp}=" for seg in ("ZFM", "PV1", "PID") for n in (2, 36) for comp in ("", ".1")]
    codes = [f"{code}{value}" for value in ("9", "20") for code in codes] + ["ZFM-2=", "PV1-36"]
    for code in codes + codes:
        position, _, value = code.partition("=")
        assert death_rule(code) == (position, Path.parse(position), value)
    assert death_rule.cache_info().currsize == len(set(codes))
    for k in range(3 * DEATH_RULE_MEMO_SIZE):
        death_rule(f"ZFM-{k + 1}=9")
    assert death_rule.cache_info().currsize == DEATH_RULE_MEMO_SIZE == death_rule.cache_info().maxsize
    for _ in range(2):  # a malformed row raises every time it is read: nothing is kept for it
        with pytest.raises(ValueError, match="not an HL7 position"):
            death_rule("ZFM2=9")


def test_stored_rows_code_systems_as_stored_system_does_and_the_memo_is_bounded() -> None:
    indexing._STORED_SYSTEMS.clear()
    systems = ["urn:oid:1.2.250.1.71.4.2.1", "urn:oid:1.2.250.1.999", "http://other.test/sid", "", f"urn:oid:{LONG}"]
    entries = [("identifier", system, f"v{k}") for k, system in enumerate(systems)]
    for _ in range(2):  # the first time computed, the second read back
        rows = stored_rows("Patient", "p", entries)
        assert [row["system"] for row in rows.values()] == [stored_system(s)[:WIDTH] for s in systems]
        assert [row["value"] for row in rows.values()] == [f"v{k}" for k in range(len(systems))]
    assert set(indexing._STORED_SYSTEMS) == set(systems[:-1])  # a long system is not kept
    for k in range(2 * indexing.STORED_SYSTEMS):
        stored_rows("Patient", "p", [("identifier", f"urn:oid:9.{k}", "v")])
    assert 0 < len(indexing._STORED_SYSTEMS) <= indexing.STORED_SYSTEMS
    assert stored_rows("Basic", "b", [("identifier", "s", "v")]) == {}  # a type no search is declared for
