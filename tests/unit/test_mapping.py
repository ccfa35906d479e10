"""The mapping engine on inline messages from the fictional hospital CH-TEST (fictional patients).

Expected values are read off the message each test writes: identifiers, names, dates (with the French
time zone for naive times), codes from the tables in ``mappings/``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.errors import MappingError, UnsupportedError, UnsupportedEventError
from gateway.hl7 import er7
from gateway.mapping import transforms
from gateway.mapping.engine import (
    PROFILE_ENCOUNTER,
    PROFILE_PATIENT,
    PROFILE_PATIENT_INS,
    Engine,
    Mapped,
    type_code,
)
from gateway.mapping.tables import Authorities
from gateway.mapping.transforms import BIRTH_LIST_GIVEN_NAME, LOCAL_SID, PROFILE_PRACTITIONER
from tests.validation import validate

ROOT = Path(__file__).resolve().parents[2]
PARIS = ZoneInfo("Europe/Paris")

IPP_OID = "1.2.250.1.999.9.1"
NDA_OID = "1.2.250.1.999.9.2"
RPPS_OID = "1.2.250.1.71.4.2.1"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CIRCONSTANCES_SORTIE = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-circonstances-sortie"

#: Authority tables for the fictional hospital: namespaces without an OID resolve through them.
TEST_SENDERS = {
    "GAM-TEST|CH-TEST": {
        "CH-TEST": f"urn:oid:{IPP_OID}",
        "CH-TEST-NDA": f"urn:oid:{NDA_OID}",
    },
    "*|CH-TEST": {"CH-TEST-LABO": "https://ch-test.example/sid/labo"},
}
_BASE = Engine.from_directory(ROOT / "mappings")
ENGINE = Engine(
    replace(
        _BASE.tables,
        authorities=Authorities(
            national=_BASE.tables.authorities.national,
            default=_BASE.tables.authorities.default,
            senders={**_BASE.tables.authorities.senders, **TEST_SENDERS},
        ),
    )
)

DR_BERNARD = f"10101010101^BERNARD^LUC^^^DR^^^ASIP-SANTE-PS&{RPPS_OID}&ISO^D^^^RPPS"
DR_PETIT = f"10202020202^PETIT^ANNE^^^DR^^^ASIP-SANTE-PS&{RPPS_OID}&ISO^D^^^RPPS"
INS = f"279129999999942^^^ASIP-SANTE-INS-NIR&{INS_TEST_OID}&ISO^INS"
IPP = f"100001^^^CH-TEST&{IPP_OID}&ISO^PI"

DEFAULTS: dict[str, dict[int, str]] = {
    "MSH": {
        3: "GAM-TEST",
        4: "CH-TEST",
        5: "GATEWAY",
        6: "ARS-TEST",
        7: "20260315101500",
        9: "ADT^A01^ADT_A01",
        10: "CTRL-0001",
        11: "P",
        12: "2.5^FRA^2.11",
        17: "FRA",
        18: "UNICODE UTF-8",
    },
    "EVN": {2: "20260315101500", 6: "20260315100000"},
    "PID": {
        1: "1",
        3: IPP,
        5: "MARTIN^JEANNE^JEANNE LOUISE^^MME^^L",
        7: "19800214",
        8: "F",
        18: f"900001^^^CH-TEST&{NDA_OID}&ISO^AN",
        32: "VALI",
    },
    "PV1": {
        1: "1",
        2: "I",
        3: f"CHIR^101^2^CH-TEST&{IPP_OID}&ISO",
        7: DR_BERNARD,
        19: f"V26-0001^^^CH-TEST&{NDA_OID}&ISO^VN",
        44: "20260315100000",
    },
    "ZBE": {
        1: f"MV-0001^CH-TEST^{IPP_OID}^ISO",
        2: "20260315100000",
        4: "INSERT",
        5: "N",
        7: f"Chirurgie^^^^^CH-TEST&{IPP_OID}&ISO^UF^^^4010",
        9: "HMS",
    },
}
ORDER = ("MSH", "EVN", "PID", "PV1", "ZBE")


def segment_text(name: str, fields: dict[int, str]) -> str:
    top = max(fields, default=0)
    if name == "MSH":
        return "MSH|^~\\&" + "".join("|" + fields.get(n, "") for n in range(3, top + 1))
    return name + "".join("|" + fields.get(n, "") for n in range(1, top + 1))


def adt(
    trigger: str = "A01", *, omit: tuple[str, ...] = (), extra: tuple[str, ...] = (), **changes: dict[int, Any]
) -> er7.Message:
    """An ADT message from CH-TEST: the defaults above, ``changes`` per segment (None clears a field)."""
    lines = []
    for name in ORDER:
        if name in omit:
            continue
        fields = dict(DEFAULTS[name])
        if name == "MSH":
            fields[9] = f"ADT^{trigger}^ADT_A01"
        for n, value in changes.get(name.lower(), {}).items():
            if value is None:
                fields.pop(n, None)
            else:
                fields[n] = value
        lines.append(segment_text(name, fields))
    lines.extend(extra)
    return er7.parse(("\r".join(lines) + "\r").encode("utf-8"))


def run(trigger: str = "A01", **kwargs: Any) -> Mapped:
    return ENGINE.map(adt(trigger, **kwargs))


def by_type(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {type_code(i): i for i in resource.get("identifier", [])}


def warned(mapped: Mapped, location: str) -> list[str]:
    return [text for where, text in mapped.warnings if where == location]


def paris(year: int, month: int, day: int, hour: int, minute: int) -> str:
    """The FHIR dateTime of a naive HL7 time, read as French local time."""
    return datetime(year, month, day, hour, minute, tzinfo=PARIS).isoformat()


def test_baseline_message_maps_without_warnings() -> None:
    mapped = run()
    assert mapped.warnings == []
    assert mapped.event.trigger == "A01"
    assert mapped.action == "INSERT"
    assert mapped.header.control_id == "CTRL-0001"
    assert mapped.header.sender == ("GAM-TEST", "CH-TEST")
    assert mapped.header.receiving_application == "GATEWAY"
    assert mapped.header.receiving_facility == "ARS-TEST"
    assert mapped.header.version == "2.5"
    assert mapped.header.sent_at == datetime(2026, 3, 15, 10, 15, tzinfo=PARIS)
    assert mapped.patient["resourceType"] == "Patient"
    assert mapped.encounter is not None
    assert mapped.encounter["resourceType"] == "Encounter"
    assert mapped.encounter["meta"]["profile"] == [PROFILE_ENCOUNTER]
    assert mapped.encounter["subject"] == {"reference": f"Patient/{mapped.patient['id']}"}


# -- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["ADT_A01", "", "ADT_A99", "XYZ^garbage", "ORU_R01"])
def test_routing_ignores_msh_9_3(structure: str) -> None:
    mapped = run(msh={9: f"ADT^A04^{structure}"})
    assert mapped.event.trigger == "A04"
    assert mapped.event.kind == "register"
    assert mapped.header.trigger == "A04"


def test_routing_is_case_insensitive() -> None:
    mapped = run(msh={9: "adt^a03"})
    assert mapped.header.message_type == "ADT"
    assert mapped.event.trigger == "A03"


@pytest.mark.parametrize("message_type", ["ORU^R01^ORU_R01", "SIU^S12", "^A01", ""])
def test_non_adt_is_unsupported(message_type: str) -> None:
    with pytest.raises(UnsupportedError) as info:
        run(msh={9: message_type})
    assert not isinstance(info.value, UnsupportedEventError)
    assert info.value.code == "200"
    assert info.value.ack_code == "AR"
    assert info.value.location == "MSH-9.1"


@pytest.mark.parametrize("trigger", ["A99", "A18", "Q01", ""])
def test_unknown_trigger_is_unsupported_event(trigger: str) -> None:
    with pytest.raises(UnsupportedEventError) as info:
        run(msh={9: f"ADT^{trigger}^ADT_A01"})
    assert isinstance(info.value, UnsupportedError)
    assert info.value.code == "201"
    assert info.value.ack_code == "AR"
    assert info.value.location == "MSH-9.2"
    assert trigger in info.value.message


def test_evn1_disagreeing_is_a_warning_and_msh_wins() -> None:
    mapped = run("A01", evn={1: "A04"})
    assert mapped.event.trigger == "A01"
    [text] = warned(mapped, "EVN-1")
    assert "A04" in text
    assert "A01" in text


@pytest.mark.parametrize("evn1", ["A01", "a01", ""])
def test_evn1_agreeing_or_empty_is_silent(evn1: str) -> None:
    assert warned(run("A01", evn={1: evn1}), "EVN-1") == []


def test_parser_warnings_reach_the_mapping_warnings() -> None:
    mapped = run(extra=("zbe|lowercase segment",))
    assert [w for w in warned(mapped, "MSH") if "invalid name" in w]


# -- required segments and fields -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "location"),
    [
        ({"omit": ("PID",)}, "PID"),
        ({"omit": ("PID", "PV1")}, "PID"),
        ({"omit": ("PV1",)}, "PV1"),
        ({"pv1": {19: None}, "pid": {18: None}}, "PV1-19"),
        ({"pv1": {19: "^^^CH-TEST^VN"}, "pid": {18: None}}, "PV1-19"),
        ({"pv1": {19: f"V26-0001^^^CH-TEST&{NDA_OID}&ISO^AN"}, "pid": {18: None}}, "PV1-19"),
        ({"pid": {3: None, 18: None}}, "PID-3"),
        ({"pid": {3: INS, 18: None}}, "PID-3"),
    ],
)
def test_missing_required_parts(kwargs: dict[str, Any], location: str) -> None:
    with pytest.raises(MappingError) as info:
        run(**kwargs)
    assert info.value.location == location
    assert info.value.code == "101"
    assert info.value.ack_code == "AE"


def test_without_pv1_19_the_account_number_identifies_the_stay() -> None:
    with_account = run(pv1={19: None})
    assert with_account.encounter is not None
    kinds = {type_code(i): i["value"] for i in with_account.encounter["identifier"]}
    assert list(kinds) == ["AN"]
    assert any(loc == "PV1-19" for loc, _ in with_account.warnings)
    assert run(pv1={19: None}).encounter["id"] == with_account.encounter["id"]  # type: ignore[index]


def test_no_evn_and_no_zbe_still_map() -> None:
    mapped = run(omit=("EVN", "ZBE"))
    assert mapped.movement is None
    assert mapped.action == "INSERT"
    assert mapped.encounter is not None


# -- patient identifiers and INS --------------------------------------------------------------


def test_ipp_and_nda_identifiers() -> None:
    patient = run().patient
    ids = by_type(patient)
    assert ids["PI"]["system"] == f"urn:oid:{IPP_OID}"
    assert ids["PI"]["value"] == "100001"
    assert ids["PI"]["type"]["coding"][0]["system"] == V2_0203
    assert ids["AN"]["system"] == f"urn:oid:{NDA_OID}"
    assert ids["AN"]["value"] == "900001"


def test_nda_without_cx5_gets_type_an() -> None:
    patient = run(pid={18: f"900002^^^CH-TEST&{NDA_OID}&ISO"}).patient
    assert by_type(patient)["AN"]["value"] == "900002"


def test_test_ins_kept_with_vali_but_typed_as_test() -> None:
    mapped = run(pid={3: f"{IPP}~{INS}", 32: "VALI"})
    ins = [i for i in mapped.patient["identifier"] if i["system"] == f"urn:oid:{INS_TEST_OID}"]
    assert len(ins) == 1
    assert ins[0]["value"] == "279129999999942"
    assert type_code(ins[0]) == "INS-NIR-TEST"  # a test OID is never a production INS
    assert mapped.patient["meta"]["profile"] == [PROFILE_PATIENT]
    assert warned(mapped, "PID-32") == []


@pytest.mark.parametrize(
    ("oid", "kind", "profile"),
    [
        ("1.2.250.1.213.1.4.8", "INS-NIR", PROFILE_PATIENT_INS),
        ("1.2.250.1.213.1.4.9", "INS-NIA", PROFILE_PATIENT_INS),
        ("1.2.250.1.213.1.4.10", "INS-NIR-TEST", PROFILE_PATIENT_INS),
        # FR Core 2.1.0's fr-core-1 omits the demo OID (it names the test one twice): fr-core-patient
        ("1.2.250.1.213.1.4.11", "INS-NIR-DEMO", PROFILE_PATIENT),
    ],
)
def test_ins_typed_by_its_authority(oid: str, kind: str, profile: str) -> None:
    """FR Core's own INS types (test and demo ones included), ``use`` official; a PatientINS when the
    patient has what that profile requires (here: the birth place with its INSEE code, PID-11 BDL)."""
    ins = f"279129999999942^^^ASIP-SANTE-INS-NIR&{oid}&ISO^INS"
    birth = "^^NANCY^^54000^FRA^BDL^^54395"
    mapped = run(pid={3: f"{IPP}~{ins}", 5: "MARTIN^JEANNE^JEANNE LOUISE^^MME^^L", 11: birth, 32: "VALI"})
    kept = [i for i in mapped.patient["identifier"] if i["system"] == f"urn:oid:{oid}"]
    assert [type_code(i) for i in kept] == [kind]
    assert kept[0]["type"]["coding"][0]["system"] == "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
    assert kept[0]["use"] == "official"
    assert mapped.patient["meta"]["profile"] == [profile]
    place = next(e for e in mapped.patient["extension"] if e["url"].endswith("/patient-birthPlace"))
    assert place["valueAddress"]["city"] == "NANCY"
    assert place["valueAddress"]["extension"][0]["valueCoding"]["code"] == "54395"
    assert validate(mapped.patient) == []


def test_ins_without_what_patient_ins_requires_claims_fr_core_patient() -> None:
    ins = "279129999999942^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
    mapped = run(pid={3: f"{IPP}~{ins}", 32: "VALI"})  # no birth place
    assert mapped.patient["meta"]["profile"] == [PROFILE_PATIENT]
    assert validate(mapped.patient) == []


def test_mobile_phone_and_ipp_use() -> None:
    mapped = run(pid={13: "^PRN^CP^^^^^^^^^0612345678~0383000000^PRN^PH"})
    assert mapped.patient["telecom"] == [
        {"system": "phone", "value": "0612345678", "use": "mobile"},
        {"system": "phone", "value": "0383000000", "use": "home"},
    ]
    ipp = next(i for i in mapped.patient["identifier"] if type_code(i) == "PI")
    assert ipp["use"] == "usual"


def test_deprecated_ins_c_is_not_kept() -> None:
    insc = "1234567890123456789012^^^ASIP-SANTE-INS-C&1.2.250.1.213.1.4.2&ISO^INS-C"
    mapped = run(pid={3: f"{IPP}~{insc}", 32: "VALI"})
    assert all("1.2.250.1.213.1.4.2" not in i["system"] for i in mapped.patient["identifier"])
    assert any("INS-C" in text for text in warned(mapped, "PID-3"))


def test_ins_under_an_unknown_authority_is_dropped() -> None:
    mapped = run(pid={3: f"{IPP}~279129999999942^^^SOMEONE&1.2.3.4&ISO^INS", 32: "VALI"})
    assert all(i["value"] != "279129999999942" for i in mapped.patient["identifier"])
    assert len(warned(mapped, "PID-3")) == 1


def test_vali_in_a_later_repetition_counts() -> None:
    mapped = run(pid={3: f"{IPP}~{INS}", 32: "HOMA~VALI"})
    assert any(i["value"] == "279129999999942" for i in mapped.patient["identifier"])


@pytest.mark.parametrize("reliability", ["vali", "VALI~HOMA"])
def test_ins_kept_with_vali_spelled_otherwise(reliability: str) -> None:
    mapped = run(pid={3: f"{IPP}~{INS}", 32: reliability})
    assert any(i["value"] == "279129999999942" for i in mapped.patient["identifier"])


@pytest.mark.parametrize("reliability", ["PROV", "", "VALIDE", "QUAL", "RECUP"])
def test_ins_dropped_without_vali(reliability: str) -> None:
    mapped = run(pid={3: f"{IPP}~{INS}", 32: reliability})
    assert all(i["value"] != "279129999999942" for i in mapped.patient["identifier"])
    assert all(not i["system"].startswith("urn:oid:1.2.250.1.213.1.4.") for i in mapped.patient["identifier"])
    assert mapped.patient["meta"]["profile"] == [PROFILE_PATIENT]
    assert len(warned(mapped, "PID-32")) == 1
    assert by_type(mapped.patient)["PI"]["value"] == "100001"


def test_patient_id_does_not_depend_on_the_ins() -> None:
    with_ins = run(pid={3: f"{IPP}~{INS}", 32: "VALI"}).patient
    without = run(pid={3: IPP, 32: "PROV"}).patient
    assert with_ins["id"] == without["id"]


def test_billing_nir_never_kept() -> None:
    nir = "279129999999942^^^ASSURANCE-MALADIE^NH"
    mapped = run(pid={3: f"{IPP}~{nir}", 32: "VALI"})
    assert all(i["value"] != "279129999999942" for i in mapped.patient["identifier"])
    assert "NH" not in by_type(mapped.patient)
    assert mapped.patient["meta"]["profile"] == [PROFILE_PATIENT]


def test_without_ipp_the_first_non_ins_identifier_is_the_key() -> None:
    # Documented fallback (engine.patient_key): no PI, so the NDA identifies the patient.
    by_nda = run(pid={3: None}).patient
    same_nda = run(pid={3: INS, 32: "VALI"}).patient
    assert by_nda["id"] == same_nda["id"]
    assert by_nda["id"] != run().patient["id"]


def test_first_ipp_is_the_patient_key() -> None:
    other_ipp = f"555555^^^CH-TEST&{IPP_OID}&ISO^PI"
    first = run(pid={3: f"{IPP}~{other_ipp}"}).patient
    alone = run(pid={3: IPP}).patient
    assert first["id"] == alone["id"]
    assert [i["value"] for i in first["identifier"] if type_code(i) == "PI"] == ["100001", "555555"]


# -- deterministic ids ------------------------------------------------------------------------


def test_same_message_twice_same_output() -> None:
    first, second = run(), run()
    assert first.patient == second.patient
    assert first.encounter == second.encounter
    assert first.movement == second.movement
    assert first.practitioners == second.practitioners
    assert first.event_time == second.event_time


def test_retry_with_new_control_id_keeps_ids() -> None:
    first = run()
    retry = run(msh={10: "CTRL-0002", 7: "20260315102000"})
    assert retry.patient["id"] == first.patient["id"]
    assert retry.encounter is not None
    assert first.encounter is not None
    assert retry.encounter["id"] == first.encounter["id"]


def test_ids_are_fhir_ids() -> None:
    mapped = run()
    assert mapped.encounter is not None
    for rid in (mapped.patient["id"], mapped.encounter["id"], *(p["id"] for p in mapped.practitioners)):
        assert 1 <= len(rid) <= 64
        assert all(c.isalnum() or c in "-." for c in rid)
        assert "100001" not in rid  # no identifier readable in an id


def test_two_facilities_same_visit_number_different_encounters() -> None:
    a = run(pv1={19: f"V26-0001^^^CH-TEST&{NDA_OID}&ISO^VN"}).encounter
    b = run(pv1={19: "V26-0001^^^CH-AUTRE&1.2.250.1.999.8.2&ISO^VN"}).encounter
    assert a is not None
    assert b is not None
    assert a["identifier"][0]["value"] == b["identifier"][0]["value"] == "V26-0001"
    assert a["identifier"][0]["system"] != b["identifier"][0]["system"]
    assert a["id"] != b["id"]


def test_visit_number_without_authority_uses_sender_facility() -> None:
    mapped = run(pv1={19: "V26-0001^^^^VN"})
    assert mapped.encounter is not None
    visit = by_type(mapped.encounter)["VN"]
    # CH-TEST (MSH-4) stands in for the missing CX-4: its table resolves it.
    assert visit["system"] == TEST_SENDERS["GAM-TEST|CH-TEST"]["CH-TEST"]
    assert visit["value"] == "V26-0001"
    assert warned(mapped, "PV1-19") == []


def test_visit_number_without_authority_two_facilities_differ() -> None:
    here = run(pv1={19: "V26-0001^^^^VN"}).encounter
    there = run(pv1={19: "V26-0001^^^^VN"}, msh={3: "GAM-X", 4: "CH-AUTRE"})
    assert here is not None
    assert there.encounter is not None
    assert there.encounter["id"] != here["id"]
    assert warned(there, "PV1-19")  # no table knows CH-AUTRE: a system is minted
    assert there.encounter["identifier"][0]["system"].startswith(LOCAL_SID)
    assert "CH-AUTRE" in there.encounter["identifier"][0]["system"]


def test_visit_number_without_authority_same_facility_other_application() -> None:
    one = run(pv1={19: "V26-0001^^^^VN"}, msh={3: "GAM-A", 4: "CH-AUTRE"}).encounter
    two = run(pv1={19: "V26-0001^^^^VN"}, msh={3: "GAM-B", 4: "CH-AUTRE", 10: "CTRL-9"}).encounter
    assert one is not None
    assert two is not None
    assert one["id"] == two["id"]


# -- assigning authorities --------------------------------------------------------------------


def test_authority_oid_first() -> None:
    # CH-TEST-NDA is in the sender table, yet the OID in CX-4.2 wins.
    patient = run(pid={3: "100001^^^CH-TEST-NDA&1.2.250.1.999.9.7&ISO^PI"}).patient
    assert by_type(patient)["PI"]["system"] == "urn:oid:1.2.250.1.999.9.7"


def test_authority_national_oid() -> None:
    mapped = run(pid={3: f"{IPP}~{INS}"})
    assert any(i["system"] == f"urn:oid:{INS_TEST_OID}" for i in mapped.patient["identifier"])


def test_authority_from_sender_table() -> None:
    mapped = run(pid={3: "100001^^^CH-TEST-NDA^PI"})
    assert by_type(mapped.patient)["PI"]["system"] == TEST_SENDERS["GAM-TEST|CH-TEST"]["CH-TEST-NDA"]
    assert warned(mapped, "PID-3") == []


def test_authority_from_facility_wildcard() -> None:
    mapped = run(pid={3: "100001^^^CH-TEST-LABO^PI"}, msh={3: "LABO-APP"})
    assert by_type(mapped.patient)["PI"]["system"] == TEST_SENDERS["*|CH-TEST"]["CH-TEST-LABO"]


def test_authority_sender_table_is_per_sender() -> None:
    here = run(pid={3: "100001^^^CH-TEST-NDA^PI"}).patient
    elsewhere = run(pid={3: "100001^^^CH-TEST-NDA^PI"}, msh={3: "GAM-X", 4: "CH-AUTRE"})
    assert by_type(elsewhere.patient)["PI"]["system"] != by_type(here)["PI"]["system"]
    assert warned(elsewhere, "PID-3")


def test_authority_from_default_table() -> None:
    default = ENGINE.tables.authorities.default
    namespace = next(iter(default))
    mapped = run(pid={3: f"100001^^^{namespace}^PI"})
    assert by_type(mapped.patient)["PI"]["system"] == default[namespace]


def test_authority_unknown_is_minted_with_warning() -> None:
    mapped = run(pid={3: "100001^^^SERVICE-X^PI"})
    system = by_type(mapped.patient)["PI"]["system"]
    assert system.startswith(LOCAL_SID)
    assert "SERVICE-X" in system
    assert len(warned(mapped, "PID-3")) == 1
    # minted, but stable: the next message gives the same system and the same patient
    again = run(pid={3: "100001^^^SERVICE-X^PI"}, msh={10: "CTRL-7"})
    assert by_type(again.patient)["PI"]["system"] == system
    assert again.patient["id"] == mapped.patient["id"]


def test_authority_non_oid_universal_id_does_not_short_circuit() -> None:
    # a FINESS (type M) is not an OID: the namespace table resolves the authority
    patient = run(pid={3: "100001^^^CH-TEST&000897406&M^PI"}).patient
    assert by_type(patient)["PI"]["system"] == TEST_SENDERS["GAM-TEST|CH-TEST"]["CH-TEST"]


# -- names, gender, dates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xpn", "expected"),
    [
        (
            "MARTIN^JEANNE^JEANNE LOUISE^^MME^^L",
            {
                "use": "official",
                "family": "MARTIN",
                # FR Core: one first given name; the birth list of given names in its extension
                "given": ["JEANNE"],
                "extension": [{"url": BIRTH_LIST_GIVEN_NAME, "valueString": "JEANNE LOUISE"}],
                "prefix": ["MME"],
            },
        ),
        ("DURAND^PAUL", {"family": "DURAND", "given": ["PAUL"]}),
        ("DURAND^PAUL^PAUL", {"family": "DURAND", "given": ["PAUL"]}),
        ("DOE^JOHN^PETER", {"family": "DOE", "given": ["JOHN", "PETER"]}),
        ("DOE^JEAN^JEANNETTE", {"family": "DOE", "given": ["JEAN", "JEANNETTE"]}),
        ("ROUX^^ANNE MARIE", {"family": "ROUX", "given": ["ANNE", "MARIE"]}),
        ("ROUX^^^^^^D", {"use": "usual", "family": "ROUX"}),
        ("^LÉA", {"given": ["LÉA"]}),
    ],
)
def test_names(xpn: str, expected: dict[str, Any]) -> None:
    assert run(pid={5: xpn}).patient["name"] == [expected]


def test_name_repetitions() -> None:
    names = run(pid={5: "MARTIN^JEANNE^JEANNE^^^^L~DUPONT^JEANNE^JEANNE^^^^D"}).patient["name"]
    assert [(n["use"], n["family"]) for n in names] == [("official", "MARTIN"), ("usual", "DUPONT")]


def test_empty_name_is_left_out() -> None:
    assert "name" not in run(pid={5: "^^^^MME"}).patient


@pytest.mark.parametrize(
    ("code", "gender"), [("F", "female"), ("M", "male"), ("U", "unknown"), ("O", "other"), ("A", "other")]
)
def test_gender_table(code: str, gender: str) -> None:
    mapped = run(pid={8: code})
    assert mapped.patient["gender"] == gender
    assert warned(mapped, "PID-8") == []


def test_gender_outside_table_is_unknown_with_warning() -> None:
    mapped = run(pid={8: "X"})
    assert mapped.patient["gender"] == "unknown"
    assert len(warned(mapped, "PID-8")) == 1


def test_gender_empty_is_absent() -> None:
    mapped = run(pid={8: None})
    assert "gender" not in mapped.patient
    assert warned(mapped, "PID-8") == []


@pytest.mark.parametrize(
    ("dtm", "birth"), [("19800214", "1980-02-14"), ("198002141230", "1980-02-14"), ("1980", "1980")]
)
def test_birth_date(dtm: str, birth: str) -> None:
    assert run(pid={7: dtm}).patient["birthDate"] == birth


@pytest.mark.parametrize(
    ("dtm", "expected"),
    [
        ("20260115083000", paris(2026, 1, 15, 8, 30)),  # winter: +01:00
        ("20260715083000", paris(2026, 7, 15, 8, 30)),  # summer: +02:00
        ("202607150830", paris(2026, 7, 15, 8, 30)),
        ("20260715083000.1234", paris(2026, 7, 15, 8, 30)),
        ("20260715083000+0000", "2026-07-15T08:30:00+00:00"),
        ("20260715083000-0500", "2026-07-15T08:30:00-05:00"),
        ("20260715", "2026-07-15"),
    ],
)
def test_period_start_dates(dtm: str, expected: str) -> None:
    encounter = run(pv1={44: dtm}).encounter
    assert encounter is not None
    assert encounter["period"]["start"] == expected


def test_naive_times_are_paris_time() -> None:
    winter = run(pv1={44: "20260115083000"}).encounter
    summer = run(pv1={44: "20260715083000"}).encounter
    assert winter is not None
    assert summer is not None
    assert winter["period"]["start"].endswith("+01:00")
    assert summer["period"]["start"].endswith("+02:00")


@pytest.mark.parametrize("bad", ["20261345", "2026-07-15", "yesterday", "20260230"])
def test_invalid_date_dropped_with_warning(bad: str) -> None:
    mapped = run(pv1={44: bad})
    assert mapped.encounter is not None
    assert "period" not in mapped.encounter
    assert len(warned(mapped, "PV1-44")) == 1
    assert bad not in warned(mapped, "PV1-44")[0]  # the value itself is not echoed


def test_deceased() -> None:
    # PID-29 and PID-30 one at a time: R4 allows only one deceased[x] (both together is a known open issue)
    patient = run(pid={29: "20260316120000"}).patient
    assert patient["deceasedDateTime"] == paris(2026, 3, 16, 12, 0)
    assert run(pid={30: "Y"}).patient["deceasedBoolean"] is True
    assert run(pid={30: "N"}).patient["deceasedBoolean"] is False
    assert "deceasedBoolean" not in run(pid={30: "?"}).patient


# -- encounter --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pv1_2", "code"), [("E", "EMER"), ("I", "IMP"), ("O", "AMB"), ("R", "AMB"), ("P", "PRENC"), ("V", "VR")]
)
def test_class_from_pv1_2(pv1_2: str, code: str) -> None:
    encounter = run(pv1={2: pv1_2}).encounter
    assert encounter is not None
    assert encounter["class"]["system"] == V3_ACT_CODE
    assert encounter["class"]["code"] == code


def test_class_unknown_is_absent_with_warning() -> None:
    mapped = run(pv1={2: "Z"})
    assert mapped.encounter is not None
    assert "class" not in mapped.encounter
    assert len(warned(mapped, "PV1-2")) == 1


def test_participants_and_practitioners() -> None:
    mapped = run(pv1={7: DR_BERNARD, 8: DR_PETIT, 17: DR_BERNARD})
    assert mapped.encounter is not None
    participants = mapped.encounter["participant"]
    assert [p["type"][0]["coding"][0]["code"] for p in participants] == ["ATND", "REF", "ADM"]
    assert all(p["type"][0]["coding"][0]["system"] == PARTICIPATION for p in participants)
    assert participants[0]["individual"]["display"] == "LUC BERNARD"
    assert participants[1]["individual"]["display"] == "ANNE PETIT"
    # the attending and the admitting doctor are one person: one Practitioner, referenced twice
    assert participants[0]["individual"]["reference"] == participants[2]["individual"]["reference"]
    assert participants[0]["individual"]["reference"] != participants[1]["individual"]["reference"]
    assert len(mapped.practitioners) == 2
    by_rpps = {p["identifier"][0]["value"]: p for p in mapped.practitioners}
    assert set(by_rpps) == {"10101010101", "10202020202"}
    bernard = by_rpps["10101010101"]
    assert bernard["resourceType"] == "Practitioner"
    assert bernard["meta"]["profile"] == [PROFILE_PRACTITIONER]
    # FR Core 2.1.0: the RPPS under its own system, and the prefixed national id (8 + RPPS) under the OID
    assert [(i["system"], i["value"], type_code(i)) for i in bernard["identifier"]] == [
        ("https://rpps.esante.gouv.fr", "10101010101", "RPPS"),
        (f"urn:oid:{RPPS_OID}", "810101010101", "IDNPS"),
    ]
    assert bernard["name"] == [{"family": "BERNARD", "given": ["LUC"], "suffix": ["DR"]}]
    assert participants[0]["individual"]["reference"] == f"Practitioner/{bernard['id']}"


def test_practitioner_keyed_by_rpps_not_by_name() -> None:
    renamed = f"10101010101^BERNARD-MOREAU^LUC^^^DR^^^ASIP-SANTE-PS&{RPPS_OID}&ISO^D^^^RPPS"
    first = run(pv1={7: DR_BERNARD}).practitioners
    second = run(pv1={7: renamed}, msh={3: "OTHER-APP", 4: "CH-AUTRE"}).practitioners
    assert [p["id"] for p in first] == [p["id"] for p in second]
    assert second[0]["name"][0]["family"] == "BERNARD-MOREAU"


def test_participant_repetitions() -> None:
    encounter = run(pv1={7: f"{DR_BERNARD}~{DR_PETIT}"}).encounter
    assert encounter is not None
    assert [p["individual"]["display"] for p in encounter["participant"]] == ["LUC BERNARD", "ANNE PETIT"]


def test_practitioner_without_id_keyed_by_name() -> None:
    mapped = run(pv1={7: "^GIRARD^MARC"})
    [practitioner] = mapped.practitioners
    assert "identifier" not in practitioner
    assert practitioner["name"] == [{"family": "GIRARD", "given": ["MARC"]}]
    assert run(pv1={7: "^GIRARD^MARC"}, msh={10: "CTRL-5"}).practitioners[0]["id"] == practitioner["id"]


def test_no_participants() -> None:
    mapped = run(pv1={7: None})
    assert mapped.encounter is not None
    assert "participant" not in mapped.encounter
    assert mapped.practitioners == []


def test_explicit_null_participant_maps_no_one() -> None:
    """PV1-7 ``""`` (HL7's explicit null) maps no participant, beside the one it is grouped with."""
    mapped = run(pv1={7: f'""~{DR_PETIT}'})
    assert mapped.encounter is not None
    assert [p["individual"]["display"] for p in mapped.encounter["participant"]] == ["ANNE PETIT"]
    assert run(pv1={7: '""'}).practitioners == []


def test_location_from_pv1_3() -> None:
    encounter = run().encounter
    assert encounter is not None
    [location] = encounter["location"]
    assert location["status"] == "active"
    assert location["location"]["display"] == "CHIR 101 2"
    assert location["location"]["identifier"]["value"] == "CHIR/101/2"
    assert location["location"]["identifier"]["system"]


def test_location_unit_only_and_absent() -> None:
    encounter = run(pv1={3: "URG"}).encounter
    assert encounter is not None
    assert encounter["location"][0]["location"]["display"] == "URG"
    empty = run(pv1={3: "^^^CH-TEST"}).encounter
    assert empty is not None
    assert "location" not in empty


def test_location_system_depends_on_facility() -> None:
    here = run(pv1={3: f"CHIR^101^2^CH-TEST&{IPP_OID}&ISO"}).encounter
    there = run(pv1={3: "CHIR^101^2^CH-AUTRE&1.2.250.1.999.8.1&ISO"}).encounter
    assert here is not None
    assert there is not None
    here_id = here["location"][0]["location"]["identifier"]
    there_id = there["location"][0]["location"]["identifier"]
    assert here_id["value"] == there_id["value"]
    assert here_id["system"] != there_id["system"]


def test_discharge_disposition_and_end() -> None:
    mapped = run("A03", pv1={36: "5", 45: "20260320143000"}, zbe={2: "20260320143000"})
    assert mapped.event.kind == "discharge"
    assert mapped.encounter is not None
    coding = mapped.encounter["hospitalization"]["dischargeDisposition"]["coding"]
    assert coding == [{"system": CIRCONSTANCES_SORTIE, "code": "5", "display": "En attente d'examen"}]
    assert mapped.encounter["period"]["end"] == paris(2026, 3, 20, 14, 30)


def test_discharge_disposition_death() -> None:
    encounter = run("A03", pv1={36: "4"}).encounter
    assert encounter is not None
    assert encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "4"


def test_discharge_disposition_outside_table() -> None:
    mapped = run("A03", pv1={36: "Q"})
    assert mapped.encounter is not None
    assert "hospitalization" not in mapped.encounter
    assert len(warned(mapped, "PV1-36")) == 1


# -- ZBE movements ----------------------------------------------------------------------------


def test_zbe_movement() -> None:
    movement = run().movement
    assert movement is not None
    assert movement["identifier"]["value"] == "MV-0001"
    assert movement["identifier"]["system"] == f"urn:oid:{IPP_OID}"
    assert type_code(movement["identifier"]) == "MN"
    assert movement["date"] == paris(2026, 3, 15, 10, 0)
    assert movement["action"] == "INSERT"
    assert movement["historic"] is False
    assert movement["medical_unit"]["code"] == "4010"
    assert movement["medical_unit"]["name"] == "Chirurgie"
    assert movement["nature"] == "HMS"
    assert "original_trigger" not in movement
    assert "care_unit" not in movement


def test_zbe_cancel() -> None:
    mapped = run("A11", zbe={4: "CANCEL", 6: "A01"})
    assert mapped.action == "CANCEL"
    assert mapped.event.kind == "cancel-admit"
    assert mapped.movement is not None
    assert mapped.movement["original_trigger"] == "A01"


def test_zbe_action_is_normalised_to_upper_case() -> None:
    mapped = run("A11", zbe={4: "cancel"})
    assert mapped.action == "CANCEL"


def test_zbe_action_wins_over_event_default() -> None:
    # A01 defaults to INSERT; a ZBE-4 UPDATE (a correction) is what applies.
    assert run("A01", zbe={4: "UPDATE"}).action == "UPDATE"


def test_zbe_action_invalid_falls_back_with_warning() -> None:
    mapped = run("A01", zbe={4: "DELETE"})
    assert mapped.action == "INSERT"
    assert len(warned(mapped, "ZBE-4")) == 1


def test_zbe_without_action_uses_event_default() -> None:
    mapped = run("A11", zbe={4: None})
    assert mapped.action == "CANCEL"
    assert warned(mapped, "ZBE-3") == []


def test_zbe_nature_outside_table_kept_as_sent() -> None:
    movement = run(zbe={9: "XYZ"}).movement
    assert movement is not None
    assert movement["nature"] == "XYZ"


def test_shifted_zbe_is_read_shifted_with_warning() -> None:
    # ZBE-3 filled, ZBE-4 empty: the action and every later field sit one position to the right.
    shifted = {
        1: f"MV-0002^CH-TEST^{IPP_OID}^ISO",
        2: "20260320143000",
        3: "20260321090000",
        4: "",
        5: "INSERT",
        6: "N",
        8: f"Cardiologie^^^^^CH-TEST&{IPP_OID}&ISO^UF^^^2101",
        10: "HMS",
    }
    mapped = run("A03", zbe={**{n: None for n in range(1, 11)}, **shifted})
    assert mapped.action == "INSERT"
    assert len(warned(mapped, "ZBE-3")) == 1
    movement = mapped.movement
    assert movement is not None
    assert movement["identifier"]["value"] == "MV-0002"
    assert movement["date"] == paris(2026, 3, 20, 14, 30)
    assert movement["action"] == "INSERT"
    assert movement["historic"] is False
    assert movement["medical_unit"]["code"] == "2101"
    assert movement["medical_unit"]["name"] == "Cardiologie"
    assert movement["nature"] == "HMS"
    assert mapped.event_time == datetime(2026, 3, 20, 14, 30, tzinfo=PARIS)


def test_shifted_zbe_cancel() -> None:
    mapped = run("A11", zbe={3: "20260321090000", 4: "", 5: "CANCEL", 6: "N", 7: "A01"})
    assert mapped.action == "CANCEL"
    assert mapped.movement is not None
    assert mapped.movement["original_trigger"] == "A01"
    assert warned(mapped, "ZBE-3")


# -- event time -------------------------------------------------------------------------------

TIMES = {
    "zbe": {2: "20260315093000"},
    "evn": {6: "20260315094000", 2: "20260315101500"},
    "msh": {7: "20260315101600"},
}


def test_event_time_prefers_zbe_2() -> None:
    assert run(**TIMES).event_time == datetime(2026, 3, 15, 9, 30, tzinfo=PARIS)


def test_event_time_evn_6_without_zbe() -> None:
    assert run(omit=("ZBE",), **TIMES).event_time == datetime(2026, 3, 15, 9, 40, tzinfo=PARIS)


def test_event_time_evn_6_when_zbe_2_empty_or_invalid() -> None:
    assert run(**{**TIMES, "zbe": {2: None}}).event_time == datetime(2026, 3, 15, 9, 40, tzinfo=PARIS)
    invalid = run(**{**TIMES, "zbe": {2: "20261399"}})
    assert invalid.event_time == datetime(2026, 3, 15, 9, 40, tzinfo=PARIS)
    assert warned(invalid, "ZBE-2")


def test_event_time_evn_2_without_evn_6() -> None:
    mapped = run(omit=("ZBE",), **{**TIMES, "evn": {2: "20260315101500", 6: None}})
    assert mapped.event_time == datetime(2026, 3, 15, 10, 15, tzinfo=PARIS)
    invalid = run(omit=("ZBE",), **{**TIMES, "evn": {2: "20260315101500", 6: "soon"}})
    assert invalid.event_time == datetime(2026, 3, 15, 10, 15, tzinfo=PARIS)


def test_event_time_msh_7_last() -> None:
    assert run(omit=("ZBE", "EVN"), **TIMES).event_time == datetime(2026, 3, 15, 10, 16, tzinfo=PARIS)
    empty_evn = run(omit=("ZBE",), **{**TIMES, "evn": {2: None, 6: None}})
    assert empty_evn.event_time == datetime(2026, 3, 15, 10, 16, tzinfo=PARIS)


def test_event_time_keeps_the_sender_offset() -> None:
    mapped = run(zbe={2: "20260315093000+0000"})
    assert mapped.event_time == datetime(2026, 3, 15, 9, 30, tzinfo=UTC)
    assert mapped.event_time.utcoffset() is not None


def test_event_time_without_any_date_is_aware_and_deterministic() -> None:
    first = run(omit=("ZBE", "EVN"), msh={7: None})
    second = run(omit=("ZBE", "EVN"), msh={7: None})
    assert first.event_time.tzinfo is not None
    assert first.event_time == second.event_time
    assert first.header.sent_at is None


# -- other patient elements -------------------------------------------------------------------


def test_address_and_birth_place() -> None:
    xad = "12 rue des Lilas^Bât B^NANCY^^54000^FRA^H~^^^^^^BDL^^54395"
    assert run(pid={11: xad}).patient["address"] == [
        {
            "line": ["12 rue des Lilas", "Bât B"],
            "city": "NANCY",
            "postalCode": "54000",
            "country": "FRA",
            "use": "home",
        }
    ]


def test_telecom_home_work_and_email() -> None:
    patient = run(
        pid={13: "0383000000^PRN^PH~^NET^Internet^jeanne.martin@example.org", 14: "0383999999^WPN^PH"}
    ).patient
    assert patient["telecom"] == [
        {"system": "phone", "value": "0383000000", "use": "home"},
        {"system": "email", "value": "jeanne.martin@example.org", "use": "home"},
        {"system": "phone", "value": "0383999999", "use": "work"},
    ]


def test_identifier_type_outside_table_kept_as_text() -> None:
    patient = run(pid={3: f"{IPP}~777^^^CH-TEST&{IPP_OID}&ISO^XX"}).patient
    other = [i for i in patient["identifier"] if i["value"] == "777"]
    assert other == [{"type": {"text": "XX"}, "system": f"urn:oid:{IPP_OID}", "value": "777"}]


def test_birth_date_month_precision() -> None:
    assert run(pid={7: "198002"}).patient["birthDate"] == "1980-02"


def test_practitioner_with_unknown_authority_gets_a_minted_system() -> None:
    mapped = run(pv1={7: "LOC-42^FAURE^ALAIN"})
    [practitioner] = mapped.practitioners
    assert practitioner["identifier"][0]["value"] == "LOC-42"
    assert practitioner["identifier"][0]["system"].startswith(LOCAL_SID)
    assert warned(mapped, "PV1-7")


def test_unit_without_uf_code_uses_its_name() -> None:
    movement = run(zbe={7: "Réanimation"}).movement
    assert movement is not None
    assert movement["medical_unit"]["code"] == "Réanimation"
    assert movement["medical_unit"]["name"] == "Réanimation"


def test_the_stay_carries_its_account_and_pid18_is_warned_about_once() -> None:
    """PID-18 (NDA) is a Patient identifier and the stay's second identifier (typed AN: an A44 without
    PV1 finds the stay by it); an unknown authority in it is said once, not once per use."""
    mapped = run(pid={18: "990777^^^AUTRE-HOPITAL&9.9.9.9&ISO^AN"})
    assert mapped.encounter is not None
    kinds = {type_code(i): i["value"] for i in mapped.encounter["identifier"]}
    assert kinds == {"VN": kinds["VN"], "AN": "990777"}
    texts = [text for where, text in mapped.warnings if where.startswith("PID-18")]
    assert len(texts) == len(set(texts)) and texts, mapped.warnings


def test_a44_without_pv1_names_the_account_to_move() -> None:
    """PAM-FR ADT_A43 (MSH EVN PID PD1 MRG): MRG-3, else PID-18, is the account; no PV1 is needed."""
    mrg = f"MRG|770099^^^CH-TEST&{IPP_OID}&ISO^PI||880777^^^CH-TEST&{IPP_OID}&ISO^AN"
    mapped = run("A44", omit=("PV1", "ZBE"), extra=(mrg,))
    assert mapped.encounter is None and mapped.account is not None
    assert mapped.account["value"] == "880777"
    from_pid = run("A44", omit=("PV1", "ZBE"), pid={18: f"990555^^^CH-TEST&{IPP_OID}&ISO^AN"})
    assert from_pid.account is not None and from_pid.account["value"] == "990555"
    with pytest.raises(MappingError, match="MRG-3 or PID-18"):
        run("A44", omit=("PV1", "ZBE"), pid={18: None})


def test_a_movement_id_without_its_value_is_no_identifier() -> None:
    mapped = run(zbe={1: f"^CH-TEST^{IPP_OID}^ISO"})
    assert mapped.movement is not None and "identifier" not in mapped.movement


def test_a_doctor_named_again_is_made_again_from_the_memo() -> None:
    """The same XCN in a later message: an equal Practitioner, a new copy of it, the same warnings."""
    doctor = "77001^LEGRAND^ANNE^^^DR^^^CH-TEST-UNKNOWN"  # an authority no table knows: a warning
    first, second = (run(pv1={7: doctor}, msh={10: f"CTRL-M{n}"}) for n in (1, 2))
    assert first.practitioners == second.practitioners
    assert first.practitioners[0] is not second.practitioners[0]
    assert first.practitioners[0]["name"] is not second.practitioners[0]["name"]
    assert warned(first, "PV1-7") == warned(second, "PV1-7") != []
    assert first.encounter is not None and second.encounter is not None
    assert first.encounter["participant"] == second.encounter["participant"]


def test_an_xcn_naming_no_one_is_remembered_as_no_one() -> None:
    for n in (1, 2):
        mapped = run(pv1={7: "^^MARC"}, msh={10: f"CTRL-N{n}"})
        assert mapped.practitioners == []
        assert mapped.encounter is not None and "participant" not in mapped.encounter


def test_the_memo_starts_again_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transforms, "MEMO_ENTRIES", 1)
    engine = Engine(ENGINE.tables)
    for doctor in (DR_BERNARD, DR_PETIT, DR_BERNARD):
        [practitioner] = engine.map(adt(pv1={7: doctor})).practitioners
        assert practitioner["identifier"][0]["value"] == doctor.split("^", 1)[0]
        assert len(engine._memo) == 1
