"""Subscription filters: parsing ``backport-filter-criteria`` and matching an Encounter (AND semantics)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.errors import http_answer
from gateway.errors import FhirError
from gateway.subscriptions.matching import SUPPORTED, Filter, Target, matches, parse_criteria

IPP_SYSTEM = "urn:oid:1.2.250.1.999.9.1"
VISIT_SYSTEM = "urn:oid:1.2.250.1.999.9.2"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "identifier": [
        {"system": IPP_SYSTEM, "value": "100001"},
        {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "279129999999942"},
    ],
}
ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "identifier": [{"system": VISIT_SYSTEM, "value": "V26-0001"}],
    "status": "in-progress",
    "class": {"system": ACT_CODE, "code": "IMP"},
    "subject": {"reference": "Patient/pat-1"},
}


def match(criteria: str, *, resource: dict[str, Any] = ENCOUNTER, patient: dict[str, Any] | None = PATIENT) -> bool:
    filters = [f.as_json() for f in parse_criteria(criteria, resource="Encounter")]
    return matches(filters, Target(resource=resource, patient=patient))


# -- parse_criteria ---------------------------------------------------------------------------


def test_parse_supported_parameters() -> None:
    filters = parse_criteria(
        f"Encounter?patient=Patient/pat-1&patient.identifier={IPP_SYSTEM}|100001"
        f"&identifier=V26-0001&class=IMP&status=finished",
        resource="Encounter",
    )
    assert filters == [
        Filter("patient", "Patient/pat-1"),
        Filter("patient.identifier", f"{IPP_SYSTEM}|100001"),
        Filter("identifier", "V26-0001"),
        Filter("class", "IMP"),
        Filter("status", "finished"),
    ]
    assert {f.param for f in filters} <= SUPPORTED["Encounter"]


def test_parse_without_resource_prefix() -> None:
    assert parse_criteria("status=in-progress", resource="Encounter") == [Filter("status", "in-progress")]
    assert parse_criteria("?class=EMER", resource="Encounter") == [Filter("class", "EMER")]
    assert parse_criteria("  Encounter?class=AMB  ", resource="Encounter") == [Filter("class", "AMB")]


def test_parse_empty_criteria() -> None:
    assert parse_criteria("", resource="Encounter") == []
    assert parse_criteria("Encounter?", resource="Encounter") == []


def test_parse_percent_encoded_values() -> None:
    [f] = parse_criteria("patient.identifier=urn%3Aoid%3A1.2.250.1.999.9.1%7C100001", resource="Encounter")
    assert f == Filter("patient.identifier", f"{IPP_SYSTEM}|100001")


def test_parse_repeated_parameter_keeps_both() -> None:
    filters = parse_criteria("class=IMP&class=EMER", resource="Encounter")
    assert filters == [Filter("class", "IMP"), Filter("class", "EMER")]


def test_filter_as_json() -> None:
    assert Filter("class", "IMP").as_json() == {"param": "class", "value": "IMP"}


@pytest.mark.parametrize("criteria", ["Encounter?location=CHIR", "subject:Patient.name=X", "_id=enc-1", "date=2026"])
def test_parse_unknown_parameter(criteria: str) -> None:
    with pytest.raises(FhirError) as info:
        parse_criteria(criteria, resource="Encounter")
    assert http_answer(type(info.value)) == (400, "not-supported")
    assert criteria.rsplit("?", maxsplit=1)[-1].split("=", maxsplit=1)[0] in info.value.message


@pytest.mark.parametrize("criteria", ["class=", "Encounter?status=&class=IMP", "patient"])
def test_parse_empty_value(criteria: str) -> None:
    with pytest.raises(FhirError) as info:
        parse_criteria(criteria, resource="Encounter")
    assert http_answer(type(info.value)) == (400, "invalid")


def test_parse_wrong_resource_type() -> None:
    with pytest.raises(FhirError) as info:
        parse_criteria("Patient?identifier=100001", resource="Encounter")
    assert http_answer(type(info.value))[1] == "not-supported"
    assert "Patient" in info.value.message


def test_parse_for_a_resource_without_filters() -> None:
    with pytest.raises(FhirError):
        parse_criteria("Observation?code=123", resource="Observation")
    assert parse_criteria("", resource="Observation") == []


# -- matches ----------------------------------------------------------------------------------


def test_no_filter_matches_everything() -> None:
    assert matches([], Target(resource=ENCOUNTER, patient=None))


@pytest.mark.parametrize(("value", "expected"), [("Patient/pat-1", True), ("pat-1", True), ("Patient/pat-2", False)])
def test_patient(value: str, expected: bool) -> None:
    assert match(f"patient={value}") is expected


def test_patient_with_another_type_prefix_does_not_match() -> None:
    assert not match("patient=Group/pat-1")


def test_patient_on_encounter_without_subject() -> None:
    encounter = {k: v for k, v in ENCOUNTER.items() if k != "subject"}
    assert not match("patient=pat-1", resource=encounter)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{IPP_SYSTEM}|100001", True),
        ("100001", True),  # without system: any system
        ("urn:oid:1.2.250.1.213.1.4.10|279129999999942", True),
        (f"{VISIT_SYSTEM}|100001", False),  # right value, wrong system
        (f"{IPP_SYSTEM}|100002", False),
        ("100002", False),
    ],
)
def test_patient_identifier(value: str, expected: bool) -> None:
    assert match(f"patient.identifier={value}") is expected


def test_patient_identifier_needs_the_patient() -> None:
    assert not match("patient.identifier=100001", patient=None)
    assert not match("patient.identifier=100001", patient={"resourceType": "Patient", "id": "x"})


def test_patient_identifier_with_empty_system_matches_identifiers_without_system() -> None:
    patient = {"resourceType": "Patient", "identifier": [{"value": "LOCAL-7"}, {"system": IPP_SYSTEM, "value": "X"}]}
    assert match("patient.identifier=|LOCAL-7", patient=patient)
    assert not match("patient.identifier=|X", patient=patient)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(f"{VISIT_SYSTEM}|V26-0001", True), ("V26-0001", True), (f"{IPP_SYSTEM}|V26-0001", False), ("V26-0002", False)],
)
def test_encounter_identifier(value: str, expected: bool) -> None:
    assert match(f"identifier={value}") is expected


def test_identifier_reads_the_encounter_not_the_patient() -> None:
    assert not match("identifier=100001")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("IMP", True), (f"{ACT_CODE}|IMP", True), ("EMER", False), ("AMB", False), ("imp", False)],
)
def test_class(value: str, expected: bool) -> None:
    assert match(f"class={value}") is expected


def test_class_on_encounter_without_class() -> None:
    encounter = {k: v for k, v in ENCOUNTER.items() if k != "class"}
    assert not match("class=IMP", resource=encounter)


@pytest.mark.parametrize(("value", "expected"), [("in-progress", True), ("finished", False), ("cancelled", False)])
def test_status(value: str, expected: bool) -> None:
    assert match(f"status={value}") is expected


def test_and_semantics() -> None:
    assert match("patient=pat-1&class=IMP&status=in-progress")
    assert not match("patient=pat-1&class=IMP&status=finished")
    assert not match("patient=pat-2&class=IMP")
    assert not match("class=IMP&class=EMER")  # repeated parameter: both must hold
    finished = {**ENCOUNTER, "status": "finished"}
    assert match("patient.identifier=100001&status=finished", resource=finished)


def test_unknown_parameter_in_stored_filters_never_matches() -> None:
    assert not matches([{"param": "location", "value": "CHIR"}], Target(resource=ENCOUNTER, patient=PATIENT))
