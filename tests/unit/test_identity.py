"""Identity in the engine and the patient fold: reliability, MRG, merges, death, HL7 nulls, tolerance."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.hl7 import er7
from gateway.mapping.engine import IDENTITY_RELIABILITY, IDENTITY_STATUS_SYSTEM, Engine, Mapped
from gateway.state.patients import fold_patient, merge_payloads, patient_payload
from tests.messages import IPP_SYSTEM, Adt

T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)
T1 = datetime(2026, 3, 2, 8, tzinfo=UTC)
T2 = datetime(2026, 3, 3, 8, tzinfo=UTC)


def mapped(engine: Engine, adt: Adt) -> Mapped:
    return engine.map(er7.parse(adt.bytes()))


def reliability(patient: dict[str, Any]) -> list[dict[str, list[str]]]:
    """Each identity-reliability extension as {sub-extension url: [codes or dates]}."""
    out = []
    for ext in (e for e in patient.get("extension", []) if e["url"] == IDENTITY_RELIABILITY):
        parts: dict[str, list[str]] = {}
        for part in ext["extension"]:
            value = part.get("valueCoding", {}).get("code") or part.get("valueDate")
            parts.setdefault(part["url"], []).append(str(value))
        out.append(parts)
    return out


def warnings_at(m: Mapped, location: str) -> list[str]:
    return [text for loc, text in m.warnings if loc == location]


# -- identity reliability -------------------------------------------------------------------------


def test_vali_with_a_production_ins_is_vali_from_the_published_code_system(mapping_engine: Engine) -> None:
    """FR Core 2.1.0 binds identityStatus to fr-core-cs-v2-0445 (PAM-FR's own codes): no QUAL/RECUP."""
    ins = "1234567890123^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
    m = mapping_engine.map(er7.parse(Adt(reliability="VALI").build().replace("^PI|", f"^PI~{ins}|", 1).encode()))
    assert reliability(m.patient) == [{"identityStatus": ["VALI"]}]
    ext = next(e for e in m.patient["extension"] if e["url"] == IDENTITY_RELIABILITY)
    assert ext["extension"][0]["valueCoding"]["system"] == IDENTITY_STATUS_SYSTEM
    assert IDENTITY_STATUS_SYSTEM.endswith("/fr-core-cs-v2-0445")


def test_vali_attributes_are_further_reliability_extensions(mapping_engine: Engine) -> None:
    m = mapped(mapping_engine, Adt(reliability="VALI~HOMA"))
    assert reliability(m.patient) == [{"identityStatus": ["VALI"]}, {"identityStatus": ["HOMA"]}]


def test_prov_with_an_ins_received_is_prov_and_the_ins_dropped(mapping_engine: Engine) -> None:
    m = mapped(mapping_engine, Adt(reliability="PROV", ins="2790399999999"))
    assert reliability(m.patient) == [{"identityStatus": ["PROV"]}]
    assert all("1.2.250.1.213.1.4" not in i["system"] for i in m.patient["identifier"])


def test_validation_mode_and_date_come_from_zfd(mapping_engine: Engine) -> None:
    """ZFD-7 (identity document) is the validation mode, ZFD-6 (INSi check) the validation date."""
    adt = Adt(reliability="VALI", extra_segments=["ZFD||||||20260301101500|CN"])
    assert reliability(mapped(mapping_engine, adt).patient) == [
        {"identityStatus": ["VALI"], "validationMode": ["CN"], "validationDate": ["2026-03-01"]}
    ]
    unknown = Adt(reliability="VALI", extra_segments=["ZFD|||||||XX"])
    assert reliability(mapped(mapping_engine, unknown).patient) == [{"identityStatus": ["VALI"]}]


def test_no_pid32_no_extension(mapping_engine: Engine) -> None:
    assert "extension" not in mapped(mapping_engine, Adt(reliability="")).patient


# -- MRG, HL7 nulls, death -------------------------------------------------------------------------


def test_mrg_names_the_prior_patient(mapping_engine: Engine) -> None:
    adt = Adt(trigger="A44", extra_segments=["MRG|200002^^^CH-TEST&1.2.250.1.999.9.1&ISO^PI"])
    m = mapped(mapping_engine, adt)
    assert m.prior is not None
    assert m.prior["identifiers"][0]["value"] == "200002"
    other = mapped(mapping_engine, Adt(ipp="200002"))
    assert m.prior["patient_id"] == other.patient["id"]


def test_an_explicit_hl7_null_maps_nothing(mapping_engine: Engine) -> None:
    text = Adt().build().replace("^PI|", '^PI~""^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS|', 1)
    m = mapping_engine.map(er7.parse(text.encode()))
    assert [i["value"] for i in m.patient["identifier"]] == ["100001"]


def test_discharge_by_death_marks_the_patient_deceased(mapping_engine: Engine) -> None:
    adt = Adt(trigger="A03", discharge_time="20260305120000", extra_segments=["ZFM||9"])
    m = mapped(mapping_engine, adt)
    assert m.patient["deceasedDateTime"] == "2026-03-05T12:00:00+01:00"
    assert "deceasedBoolean" not in m.patient


def test_ordinary_discharge_says_nothing_of_death(mapping_engine: Engine) -> None:
    m = mapped(mapping_engine, Adt(trigger="A03", extra_segments=["ZFM||8"]))
    assert "deceasedDateTime" not in m.patient and "deceasedBoolean" not in m.patient


# -- tolerance ------------------------------------------------------------------------------------


def test_non_standard_structure_and_version_are_warned_not_refused(mapping_engine: Engine) -> None:
    text = Adt().build().replace("ADT^A01^ADT_A01", "ADT^A01^ADT_A05").replace("2.5^FRA^2.11", "2.2")
    m = mapping_engine.map(er7.parse(text.encode()))
    assert warnings_at(m, "MSH-9.3") and warnings_at(m, "MSH-12")
    assert m.event.trigger == "A01"


def test_supported_versions_are_silent(mapping_engine: Engine) -> None:
    for version in ("2.3", "2.5", "2.8"):
        m = mapping_engine.map(er7.parse(Adt().build().replace("2.5^FRA^2.11", version).encode()))
        assert warnings_at(m, "MSH-12") == []


def test_zbe9_outside_its_table_is_warned(mapping_engine: Engine) -> None:
    m = mapping_engine.map(er7.parse(Adt().build().replace("|HMS", "|XYZ").encode()))
    if "MovementNature" in mapping_engine.tables.codes:
        assert warnings_at(m, "ZBE-9")
    assert m.movement is not None and m.movement["nature"] == "XYZ"


def test_recorded_at_comes_from_evn2(mapping_engine: Engine) -> None:
    m = mapped(mapping_engine, Adt(event_time="20260301080000"))
    assert m.recorded_at == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)


# -- the patient fold -----------------------------------------------------------------------------


def snapshot(at: datetime, control: str, **fields: Any) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": IPP_SYSTEM, "value": "1"}], **fields}
    return patient_payload(patient=patient, event_time=at, control_id=control)


def test_death_is_sticky_across_later_updates_without_death_information() -> None:
    folded = fold_patient(
        [snapshot(T0, "a"), snapshot(T1, "b", deceasedDateTime="2026-03-02"), snapshot(T2, "c", gender="male")]
    )
    assert folded is not None
    assert folded["deceasedDateTime"] == "2026-03-02" and folded["gender"] == "male"


def test_death_can_be_undone_by_a_later_explicit_statement() -> None:
    folded = fold_patient([snapshot(T0, "a", deceasedBoolean=True), snapshot(T1, "b", deceasedBoolean=False)])
    assert folded is not None and folded["deceasedBoolean"] is False


def test_merge_links_both_patients_and_deactivates_the_merged_one() -> None:
    merged_fact, absorbed_fact = merge_payloads(
        merged_id="p2",
        merged_identifiers=[{"system": IPP_SYSTEM, "value": "2"}],
        survivor_id="p1",
        event_time=T1,
        control_id="m",
    )
    merged = fold_patient([merged_fact])
    assert merged == {
        "resourceType": "Patient",
        "id": "p2",
        "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]},
        "identifier": [{"system": IPP_SYSTEM, "value": "2"}],
        "active": False,
        "link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}],
    }
    survivor = fold_patient([snapshot(T0, "a"), absorbed_fact])
    assert survivor is not None and survivor["active"] is True
    assert survivor["link"] == [{"other": {"reference": "Patient/p2"}, "type": "replaces"}]


def test_patient_fold_is_order_independent() -> None:
    facts = [
        snapshot(T0, "a", gender="female"),
        snapshot(T2, "c", gender="male"),
        snapshot(T1, "b", deceasedBoolean=True),
    ]
    assert fold_patient(facts) == fold_patient(list(reversed(facts))) == fold_patient(facts[1:] + facts[:1])
