"""The care circle's directory resources (gateway/mapping/directory.py): what each member becomes."""

from __future__ import annotations

import pytest

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


def _naming(k: int) -> dict[str, object]:
    """A message's members: a ROL doctor, a PV1 attending and admitting doctor, a unit in charge (k-th)."""
    doctor = {"reference": f"Practitioner/p{k}", "display": f"DR {k}"}
    return {
        "facility": f"CH-{k % 3}",
        "participations": [
            {"member": doctor, "role": "AT" if k % 2 else "RP", "action": "INSERT"},
            {"member": {}, "role": "AT"},
            {"role": "AD"},
        ],
        "encounter": {
            "participant": [
                {"type": [{"coding": [{"code": "ATND"}]}], "individual": {"reference": f"Practitioner/a{k}"}},
                {"type": [{"coding": [{"code": "ADM"}]}], "individual": {"reference": f"Practitioner/m{k % 2}"}},
                {"type": [{"coding": [{"code": "XXX"}]}], "individual": {"reference": "Practitioner/x"}},
            ]
        }
        if k % 4
        else None,
        "movement": {"medical_unit": {"system": "urn:oid:1.2.3", "code": f"UF{k % 5}", "name": "Cardio"}}
        if k % 3
        else {},
    }


def _unmemoized(naming: dict[str, object]) -> list[dict[str, object]]:
    """``of_message`` with its memo out of the way: every naming is "too long" to be kept."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(directory, "DIRECTORY_MEMO_LONGEST", -1)
        before = directory._known_directory.cache_info()
        out = directory.of_message(**naming)  # type: ignore[arg-type]
        assert directory._known_directory.cache_info() == before  # neither looked up nor kept
    return out


def test_memoized_directory_is_the_unmemoized_one_and_a_new_copy_each_time() -> None:
    for k in range(24):
        naming = _naming(k)
        expected = _unmemoized(naming)
        directory._known_directory.cache_clear()
        first = directory.of_message(**naming)  # type: ignore[arg-type]
        again = directory.of_message(**naming)  # type: ignore[arg-type]
        assert first == again == expected and repr(first) == repr(expected)
        assert directory._known_directory.cache_info().hits == 1
        if first:
            first[0]["id"] = "changed"
            assert directory.of_message(**naming)[0]["id"] != "changed"  # type: ignore[arg-type]


def test_directory_memo_is_bounded() -> None:
    directory._known_directory.cache_clear()
    for k in range(directory.DIRECTORY_MEMO_SIZE + 50):  # a hostile feed: a new doctor per message
        directory.of_message(**_naming(k))  # type: ignore[arg-type]
    info = directory._known_directory.cache_info()
    assert info.currsize == info.maxsize == directory.DIRECTORY_MEMO_SIZE
