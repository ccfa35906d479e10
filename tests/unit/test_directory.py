"""The care circle's directory resources (gateway/mapping/directory.py): what each member becomes."""

from __future__ import annotations

from gateway.mapping import directory

DOCTOR = {"reference": "Practitioner/abc", "identifier": {"system": "https://rpps.esante.gouv.fr", "value": "1"}}
UF = {"identifier": {"system": "https://gw.test/sid/uf/CH-X", "value": "3001"}, "display": "Médecine"}


def test_a_doctor_in_the_hospital_s_name_is_a_role_for_it() -> None:
    found = directory.member({**DOCTOR, "display": "JEAN MEDECIN"}, role="AT", source="hospital:CH-X")
    role, hospital = found.resources
    assert role["organization"]["reference"] == f"Organization/{hospital['id']}"
    assert found.reference["reference"] == f"PractitionerRole/{role['id']}"
    assert found.reference["identifier"] == DOCTOR["identifier"] and found.reference["display"] == "JEAN MEDECIN"
    assert directory.practitioner_of_role(found.reference["reference"]) == "Practitioner/abc"


def test_other_doctors_and_platform_members_have_no_organization() -> None:
    (role,) = directory.member(DOCTOR, role="ODRP", source="hospital:CH-X").resources
    assert "organization" not in role and role["id"] == "abc"
    assert directory.member(DOCTOR, role="AT", source="platform:Parceo").resources[0].get("organization") is None
    assert directory.facility_of("platform:Parceo") is None and directory.facility_of("hospital") is None


def test_a_unit_is_a_uf_organization_part_of_its_hospital_when_known() -> None:
    organization, hospital = directory.member(UF, role="UF", source="hospital:CH-X").resources
    assert organization["partOf"]["reference"] == f"Organization/{hospital['id']}"
    (alone,) = directory.member(UF, role="UF", source="platform:Parceo").resources
    assert "partOf" not in alone and alone["name"] == "Médecine"


def test_references_already_allowed_or_unresolvable_are_kept() -> None:
    for reference in ({"reference": "RelatedPerson/x"}, {"display": "somebody"}, {"identifier": {"value": "1"}}):
        assert directory.member(reference, role="CP", source="hospital:CH-X") == directory.Member(reference, ())
    assert directory.practitioner_of_role("Organization/x") is None
    assert directory.unit_reference(None) is None
