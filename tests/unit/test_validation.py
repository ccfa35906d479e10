"""The profile validator (tests/validation.py) is not vacuous: it loads every profile the gateway claims,
accepts a conforming resource and names what breaks one, and refuses a profile it cannot load."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.validation import CDS_CARETEAM_URL, FR_CORE, ProfileError, Validator, validate, validator

#: Every profile the gateway claims for the resources it produces.
CLAIMED = [
    f"{FR_CORE}fr-core-patient",
    f"{FR_CORE}fr-core-patient-ins",
    f"{FR_CORE}fr-core-encounter",
    f"{FR_CORE}fr-core-practitioner",
    f"{FR_CORE}fr-core-practitioner-role",
    f"{FR_CORE}fr-core-organization",
    f"{FR_CORE}fr-core-organization-uf",
    CDS_CARETEAM_URL,
]

ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "e1",
    "meta": {"profile": [f"{FR_CORE}fr-core-encounter"]},
    "identifier": [
        {
            "type": {
                "coding": [
                    {"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-identifier-type", "code": "VN"}
                ]
            },
            "system": "urn:oid:1.2.250.1.999.1.2",
            "value": "2026000001",
        }
    ],
    "status": "in-progress",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2027-01-18T09:00:00+01:00"},
}
CARETEAM = {
    "resourceType": "CareTeam",
    "id": "c1",
    "meta": {"profile": [CDS_CARETEAM_URL]},
    "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0f5e0c3e-8e7b-4c47-9f55-6f1b0c3c1a11"}],
    "status": "active",
    "name": "Cercle de soins",
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2027-01-18"},
    "participant": [{"member": {"reference": "PractitionerRole/r1"}, "period": {"start": "2027-01-18"}}],
}


@pytest.mark.parametrize("url", CLAIMED, ids=lambda u: u.rsplit("/", 1)[-1])
def test_every_claimed_profile_builds(url: str) -> None:
    assert validator().model(url) is not None


def test_a_conforming_resource_has_no_error() -> None:
    assert validate(ENCOUNTER) == []
    assert validate(CARETEAM) == []


@pytest.mark.parametrize(
    ("resource", "broken"),
    [
        ({**ENCOUNTER, "status": None}, "status"),
        ({k: v for k, v in ENCOUNTER.items() if k != "class"}, "class"),
        ({k: v for k, v in CARETEAM.items() if k != "identifier"}, "identifier"),
        ({k: v for k, v in CARETEAM.items() if k != "period"}, "period"),
        ({**CARETEAM, "participant": [{"member": {"reference": "PractitionerRole/r1"}}]}, "participant"),
    ],
    ids=["encounter status", "encounter class", "careteam identifier", "careteam period", "member period"],
)
def test_a_broken_resource_is_reported(resource: dict[str, object], broken: str) -> None:
    resource = {k: v for k, v in resource.items() if v is not None}
    errors = validate(resource)
    assert errors, f"no error for a resource without {broken}"
    assert any(broken in e for e in errors), errors


def test_an_unknown_profile_is_an_error_not_a_skip() -> None:
    resource = {**ENCOUNTER, "meta": {"profile": ["https://example.org/StructureDefinition/nowhere"]}}
    assert any("nowhere" in e for e in validate(resource))


def test_a_missing_package_fails(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        Validator(tmp_path / "package.tgz")
