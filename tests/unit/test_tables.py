"""Mapping tables: the real ``mappings/`` load, and every broken copy fails fast with a ConfigError naming its file."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import cli
from gateway.errors import ConfigError
from gateway.mapping.engine import Engine
from gateway.mapping.ids import MEMO_LONGEST
from gateway.mapping.tables import AUTHORITY_MEMO_SIZE, EVENT_KINDS, Authorities, load_tables
from gateway.mapping.transforms import TRANSFORMS

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"


def check(directory: Path) -> Engine:
    """What ``gateway check-mappings`` does: build the engine from the directory (tables + transforms)."""
    return Engine.from_directory(directory)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}: the test's assumption about the real table broke"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def fails(directory: Path, *fragments: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check(directory)
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    return info.value


# -- the real tables --------------------------------------------------------------------------


def test_real_mappings_load() -> None:
    tables = check(MAPPINGS).tables
    csv_files = sorted(p.stem for p in (MAPPINGS / "codes").glob("*.csv"))
    assert sorted(tables.codes) == csv_files
    assert sorted(tables.segments) == sorted(p.stem for p in (MAPPINGS / "segments").glob("*.yaml"))
    assert tables.source == MAPPINGS
    for role in ("patient", "encounter", "movement"):
        assert tables.event_segments[role] in tables.segments
    for spec in tables.events.values():
        assert spec.kind in EVENT_KINDS
        assert all(cancelled in tables.events for cancelled in spec.cancels)
    for seg_map in tables.segments.values():
        for rule in seg_map.rules:
            assert rule.transform in TRANSFORMS
            if "table" in rule.args:
                assert rule.args["table"] in tables.codes


def test_real_code_tables_match_their_csv() -> None:
    tables = check(MAPPINGS).tables
    for path in (MAPPINGS / "codes").glob("*.csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(tables.codes[path.stem]) == len(rows)
        for row in rows:
            loaded = tables.code(path.stem, row["code"])
            assert loaded is not None
            assert loaded.target_code == row["target_code"]
    assert tables.code("AdministrativeSex_to_Gender", "no such code") is None


def test_real_events_core_triggers() -> None:
    events = check(MAPPINGS).tables.events
    assert events["A01"].kind == "admit"
    assert events["A01"].action == "INSERT"
    assert events["A03"].kind == "discharge"
    assert events["A11"].action == "CANCEL"
    assert "A01" in events["A11"].cancels
    assert events["A13"].cancels == ("A03",)


def test_code_row_coding_skips_empty_parts() -> None:
    tables = check(MAPPINGS).tables
    gender = tables.code("AdministrativeSex_to_Gender", "F")
    assert gender is not None
    assert gender.coding() == {"code": "female"}
    imp = tables.code("PatientClass_to_EncounterClass", "I")
    assert imp is not None
    assert imp.coding() == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
        "display": "inpatient encounter",
    }


def test_authorities_lookup_order() -> None:
    authorities = Authorities(
        national={"1.2.250.1.213.1.4.8": "urn:oid:1.2.250.1.213.1.4.8"},
        default={"RPPS": "urn:oid:1.2.250.1.71.4.2.1", "SHARED": "https://default.example/shared"},
        senders={
            "GAM-TEST|CH-TEST": {"CH-TEST": "urn:oid:1.2.250.1.999.9.1", "SHARED": "https://ch-test/shared"},
            "*|CH-TEST": {"WILD": "https://ch-test/wild"},
        },
    )
    sender = ("GAM-TEST", "CH-TEST")
    # 1. a universal id that is an OID wins over every namespace table
    assert (
        authorities.system_for(namespace="CH-TEST", universal_id="1.2.250.1.999.9.7", sender=sender)
        == "urn:oid:1.2.250.1.999.9.7"
    )
    assert (
        authorities.system_for(namespace="", universal_id="1.2.250.1.213.1.4.8", sender=sender)
        == "urn:oid:1.2.250.1.213.1.4.8"
    )
    # 2. the sender's table, then the facility wildcard
    assert authorities.system_for(namespace="CH-TEST", universal_id="", sender=sender) == "urn:oid:1.2.250.1.999.9.1"
    assert authorities.system_for(namespace="SHARED", universal_id="", sender=sender) == "https://ch-test/shared"
    assert authorities.system_for(namespace="WILD", universal_id="", sender=("OTHER-APP", "CH-TEST")) == (
        "https://ch-test/wild"
    )
    # 3. the default table
    assert (
        authorities.system_for(namespace="SHARED", universal_id="", sender=("X", "CH-OTHER"))
        == "https://default.example/shared"
    )
    assert authorities.system_for(namespace="RPPS", universal_id="", sender=sender) == "urn:oid:1.2.250.1.71.4.2.1"
    # a universal id that is not an OID (FINESS, type M) does not short-circuit the tables
    assert (
        authorities.system_for(namespace="CH-TEST", universal_id="000897406", sender=sender)
        == "urn:oid:1.2.250.1.999.9.1"
    )
    # 4. nobody knows it
    assert authorities.system_for(namespace="NOBODY", universal_id="", sender=sender) is None
    assert authorities.system_for(namespace="CH-TEST", universal_id="", sender=("GAM-TEST", "CH-OTHER")) is None
    assert authorities.system_for(namespace="", universal_id="1.02.3", sender=sender) is None  # not an OID


# -- check-mappings fails fast ----------------------------------------------------------------


def test_unknown_transform(copy: Path) -> None:
    edit(copy / "segments" / "PV1_to_Encounter.yaml", "transform: location_pl", "transform: location_magic")
    fails(copy, "PV1_to_Encounter.yaml", "location_magic", "unknown transform")


def test_unknown_code_table(copy: Path) -> None:
    edit(copy / "segments" / "PID_to_Patient.yaml", "table: AdministrativeSex_to_Gender", "table: Sex_v9")
    fails(copy, "PID_to_Patient.yaml", "Sex_v9", "unknown code table")


def test_code_table_removed_while_still_used(copy: Path) -> None:
    (copy / "codes" / "DischargeDisposition.csv").unlink()
    fails(copy, "PV1_to_Encounter.yaml", "DischargeDisposition")


@pytest.mark.parametrize("name", ["IdentifierType", "ParticipationType"])
def test_code_table_read_by_the_transforms_is_required(copy: Path, name: str) -> None:
    (copy / "codes" / f"{name}.csv").unlink()
    fails(copy, f"{name}.csv", "missing")


@pytest.mark.parametrize("bad", ["PV1_19", "pv1-19", "PV1-19.x", "PV1", "PV1-19.1.2.3"])
def test_bad_hl7_path(copy: Path, bad: str) -> None:
    edit(copy / "segments" / "PV1_to_Encounter.yaml", "from: PV1-19,", f"from: {bad},")
    fails(copy, "PV1_to_Encounter.yaml", "not an HL7 position")


@pytest.mark.parametrize("bad", ["identifier[0]", "period..start", "1period", "period.start-date", ""])
def test_bad_target_path(copy: Path, bad: str) -> None:
    edit(copy / "segments" / "PV1_to_Encounter.yaml", "to: period.start,", f'to: "{bad}",')
    fails(copy, "PV1_to_Encounter.yaml", "dotted element path")


def test_rule_missing_a_key(copy: Path) -> None:
    edit(copy / "segments" / "PV1_to_Encounter.yaml", "{from: PV1-44, to: period.start, ", "{from: PV1-44, ")
    fails(copy, "PV1_to_Encounter.yaml", "needs 'from', 'to' and 'transform'")


def test_rule_args_not_a_mapping(copy: Path) -> None:
    edit(
        copy / "segments" / "PV1_to_Encounter.yaml",
        "args: {table: DischargeDisposition}",
        "args: [DischargeDisposition]",
    )
    fails(copy, "PV1_to_Encounter.yaml", "'args' must be a mapping")


def test_segment_map_without_rules(copy: Path) -> None:
    (copy / "segments" / "ZBE_to_Movement.yaml").write_text("resource: Movement\n", encoding="utf-8")
    fails(copy, "ZBE_to_Movement.yaml", "'rules'")


def test_invalid_yaml(copy: Path) -> None:
    (copy / "segments" / "PID_to_Patient.yaml").write_text("resource: Patient\nrules: [\n", encoding="utf-8")
    fails(copy, "PID_to_Patient.yaml", "not valid YAML")


def test_duplicate_code_row(copy: Path) -> None:
    path = copy / "codes" / "AdministrativeSex_to_Gender.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, "F,male,duplicate"]) + "\n", encoding="utf-8")
    error = fails(copy, "AdministrativeSex_to_Gender.csv", "'F' appears twice")
    assert f":{len(lines) + 1}:" in error.message  # the line of the duplicate


def test_code_row_with_empty_target(copy: Path) -> None:
    edit(copy / "codes" / "DischargeDisposition.csv", "\n5,5,", "\n5,,")
    fails(copy, "DischargeDisposition.csv", "empty code or target_code")


def test_code_table_without_required_columns(copy: Path) -> None:
    (copy / "codes" / "Extra.csv").write_text("value,display\nA,b\n", encoding="utf-8")
    fails(copy, "Extra.csv", "'code' and 'target_code'")


def test_event_with_unknown_kind(copy: Path) -> None:
    edit(copy / "messages" / "ADT.yaml", "A01: {kind: admit,", "A01: {kind: admission,")
    fails(copy, "ADT.yaml", "event A01", "kind must be one of")


def test_event_without_kind(copy: Path) -> None:
    edit(copy / "messages" / "ADT.yaml", "A01: {kind: admit,", "A01: {")
    fails(copy, "ADT.yaml", "event A01", "kind")


def test_event_with_unknown_action(copy: Path) -> None:
    edit(
        copy / "messages" / "ADT.yaml", "A03: {kind: discharge, action: INSERT", "A03: {kind: discharge, action: DELETE"
    )
    fails(copy, "ADT.yaml", "event A03", "action must be one of")


def test_event_cancels_unknown_trigger(copy: Path) -> None:
    edit(copy / "messages" / "ADT.yaml", "cancels: [A03]", "cancels: [A03, A99]")
    fails(copy, "ADT.yaml", "A13", "cancels unknown trigger 'A99'")


def test_missing_segment_map_file(copy: Path) -> None:
    (copy / "segments" / "ZBE_to_Movement.yaml").unlink()
    fails(copy, "ADT.yaml", "ZBE_to_Movement", "does not exist")


def test_segment_map_role_missing(copy: Path) -> None:
    edit(copy / "messages" / "ADT.yaml", "  movement: ZBE_to_Movement\n", "")
    fails(copy, "ADT.yaml", "'movement'")


def test_segment_map_role_names_unknown_map(copy: Path) -> None:
    edit(copy / "messages" / "ADT.yaml", "encounter: PV1_to_Encounter", "encounter: PV2_to_Encounter")
    fails(copy, "ADT.yaml", "PV2_to_Encounter")


def test_messages_file_missing(copy: Path) -> None:
    (copy / "messages" / "ADT.yaml").unlink()
    fails(copy, "ADT.yaml", "missing")


def test_messages_file_without_events(copy: Path) -> None:
    (copy / "messages" / "ADT.yaml").write_text("message_type: ADT\n", encoding="utf-8")
    fails(copy, "ADT.yaml", "'events'")


@pytest.mark.parametrize(
    ("section", "system"),
    [
        ("default", "not a uri"),
        ("default", "urn:oid:1.2.x"),
        ("default", "ftp://example.org/ids"),
        ("national", "1.2.250.1.213.1.4.8"),
        ("sender", "CH-TEST ids"),
    ],
)
def test_bad_authority_system_uri(copy: Path, section: str, system: str) -> None:
    path = copy / "authorities.yaml"
    if section == "default":
        edit(path, "default:\n", f'default:\n  BROKEN: "{system}"\n')
    elif section == "national":
        edit(path, "national:\n", f'national:\n  "9.9.9": "{system}"\n')
    else:
        edit(path, "senders:\n", f'senders:\n  "GAM-TEST|CH-TEST":\n    CH-TEST: "{system}"\n')
    fails(copy, "authorities.yaml", repr(system), "not a URI")


def test_authority_sender_key_needs_a_bar(copy: Path) -> None:
    edit(copy / "authorities.yaml", '"GAM-DEMO|CH-DEMO":', '"GAM-DEMO CH-DEMO":')
    fails(copy, "authorities.yaml", "'GAM-DEMO CH-DEMO'", "MSH-3|MSH-4")


def test_authorities_file_missing(copy: Path) -> None:
    (copy / "authorities.yaml").unlink()
    fails(copy, "authorities.yaml", "missing")


def test_authorities_file_not_a_mapping(copy: Path) -> None:
    (copy / "authorities.yaml").write_text("- a\n- b\n", encoding="utf-8")
    fails(copy, "authorities.yaml", "must be a mapping")


def test_empty_authorities_file_is_allowed(copy: Path) -> None:
    (copy / "authorities.yaml").write_text("# nothing configured\n", encoding="utf-8")
    authorities = check(copy).tables.authorities
    assert authorities.national == authorities.default == authorities.senders == {}


def test_directory_missing(tmp_path: Path) -> None:
    fails(tmp_path / "nowhere", "mappings directory not found", "nowhere")


def test_unknown_transform_refused_even_if_engine_is_bypassed(copy: Path) -> None:
    # load_tables checks against the transform names it is given, not a global list.
    with pytest.raises(ConfigError, match="unknown transform 'location_pl'"):
        load_tables(copy, transforms=frozenset(TRANSFORMS) - {"location_pl"})


# -- the command itself -----------------------------------------------------------------------


def test_check_mappings_command_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-mappings", "--mappings-dir", str(MAPPINGS)]) == 0
    out = capsys.readouterr().out
    tables = check(MAPPINGS).tables
    assert "mappings OK" in out
    assert f"{len(tables.events)} events" in out


def test_check_mappings_command_fails_with_the_file_name(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(copy / "segments" / "PV1_to_Encounter.yaml", "transform: location_pl", "transform: location_magic")
    assert cli.main(["check-mappings", "--mappings-dir", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "PV1_to_Encounter.yaml" in err
    assert "location_magic" in err


# -- ANS NdE: ADT triggers → TRE_R254 event types ------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("A01,ADM,", "A01,ADX,", "'ADX' (A01) is not a TRE_R254 code"),
        ("A03,SOR,", "A99,SOR,", "'A99' is not an INSERT trigger"),
        ("A03,SOR,", "A13,SOR,", "'A13' is not an INSERT trigger"),
        ("de santé,ASS_A13 SOR", "de sante,ASS_A13 SOR", "system and display must be TRE_R254's"),
    ],
    ids=["unknown-code", "unknown-trigger", "cancel-trigger", "wrong-display"],
)
def test_event_type_table_checked_against_the_terminology(copy: Path, old: str, new: str, fragment: str) -> None:
    edit(copy / "codes" / "ADT_to_TRE_R254.csv", old, new)
    fails(copy, "ADT_to_TRE_R254.csv", fragment)


def test_event_type_table_names_only_what_adt_expresses() -> None:
    tables = check(MAPPINGS).tables
    terminology = tables.codes["TRE_R254_TypeEvenement"]
    assert len(terminology) == 21  # TRE_R254 version 20240329120000, every code
    mapped = {t: r.target_code for t, r in tables.codes["ADT_to_TRE_R254"].items()}
    assert mapped == {"A01": "ADM", "A04": "ADM", "A03": "SOR"}


def _memo_authorities() -> Authorities:
    return Authorities(
        national={"1.2.250.1.213.1.4.8": "urn:oid:1.2.250.1.213.1.4.8"},
        default={"RPPS": "urn:oid:1.2.250.1.71.4.2.1"},
        senders={"GAM|CH": {"CH": "urn:oid:1.2.250.1.999.9.1"}, "*|CH": {"WILD": "https://ch/wild"}},
    )


def test_memoized_authority_systems_are_the_unmemoized_ones() -> None:
    """Across national, OID, sender, wildcard, default and unknown authorities, each asked twice and in
    both orders: the memo answers what the lookup answers, ``None`` included."""
    authorities = _memo_authorities()
    asks = [
        (namespace, universal_id, sender)
        for namespace in ("CH", "WILD", "RPPS", "NOWHERE", "")
        for universal_id in ("", "1.2.250.1.213.1.4.8", "1.2.250.1.999.9.7", "000897406")
        for sender in (("GAM", "CH"), ("OTHER", "CH"), ("GAM", "ELSEWHERE"))
    ]
    answers = set()
    for namespace, universal_id, sender in asks + asks[::-1]:
        expected = authorities.lookup(namespace=namespace, universal_id=universal_id, sender=sender)
        assert authorities.system_for(namespace=namespace, universal_id=universal_id, sender=sender) == expected
        answers.add(expected)
    assert None in answers and len(answers) == 6  # every branch of the lookup answered
    assert len(authorities._known) == len(asks)
    # the memo is not part of the tables' value, and a replaced table starts without one
    assert authorities == _memo_authorities()
    assert replace(authorities, senders={})._known == {}


def test_authority_memo_is_bounded_and_keeps_no_long_argument() -> None:
    authorities = _memo_authorities()
    for k in range(3 * AUTHORITY_MEMO_SIZE):  # a hostile feed: a new namespace per message
        assert authorities.system_for(namespace=f"NS{k}", universal_id="", sender=("GAM", "CH")) is None
        assert len(authorities._known) <= AUTHORITY_MEMO_SIZE
    assert authorities.system_for(namespace="CH", universal_id="", sender=("GAM", "CH")) == "urn:oid:1.2.250.1.999.9.1"
    before = dict(authorities._known)
    long = "9" * MEMO_LONGEST
    assert authorities.system_for(namespace="CH", universal_id=f"1.{long}", sender=("GAM", "CH")) == f"urn:oid:1.{long}"
    assert authorities.system_for(namespace=long, universal_id="", sender=("GAM", "CH")) is None
    assert authorities._known == before
