"""The directory resources a care circle's members point at (ANS CDS 2.0.1 wants no bare Practitioner).

A CDS CareTeam member is a PractitionerRole (a practitioner acting for an organization), an Organization
or a RelatedPerson. The hospital feeds name practitioners and units, so the gateway derives, purely and
deterministically from what the circle's fold already knows:

- the sending hospital as an Organization (``fr-core-organization``), keyed by MSH-4;
- each unit in charge (UF médicale, ZBE-7) as an Organization (``fr-core-organization-uf``), part of it;
- each practitioner's role as a PractitionerRole (``fr-core-practitioner-role``): for the hospital when he
  acts in its name (attending, admitting: ``HOSPITAL_ROLES``), for no organization otherwise (the
  médecin traitant, a referring doctor: the gateway does not know their practice).

The engine writes these resources from each message that names a member (:func:`of_message`), and the
circle's fold only makes the references (:func:`member`): both through the same functions, so every
reference resolves, and the resources depend on the messages received, never on their order.

A PractitionerRole's id starts with its practitioner's id, so that a circle is still found by
``participant=Practitioner/<id>`` (``gateway/db/indexing.py``) without a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.mapping.ids import MEMO_LONGEST, resource_id
from gateway.mapping.transforms import local_system

JSON = dict[str, Any]
FR_CORE = "https://hl7.fr/ig/fhir/core/StructureDefinition"
PROFILE_ORGANIZATION = f"{FR_CORE}/fr-core-organization"
PROFILE_UF = f"{FR_CORE}/fr-core-organization-uf"
PROFILE_ROLE = f"{FR_CORE}/fr-core-practitioner-role"
#: fr-core-vs-organization-identifier-type: a hospital's own codes are internal identifiers.
INTERNAL_ID = {
    "coding": [
        {
            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
            "code": "INTRN",
            "display": "Identifiant interne",
        }
    ]
}
#: fr-core-vs-organization-type (fr-core-cs-v2-3307).
ORGANIZATION_TYPE = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-3307"
UF_TYPE = {"coding": [{"system": ORGANIZATION_TYPE, "code": "UF", "display": "Unité fonctionnelle"}]}
#: Stay participant types (v3-ParticipationType, as mapped from PV1) → care circle role codes (ROL-3).
STAY_ROLES = {"ATND": "AT", "ADM": "AD", "REF": "RP"}
#: Care circle roles (ROL-3 codes, and stay roles as above) held in the hospital's name.
HOSPITAL_ROLES = frozenset({"AT", "AD"})
ROLE_ID_SEPARATOR = "-"


@dataclass(frozen=True, slots=True)
class Member:
    """A circle member as CDS wants it: the Reference, and the resources it needs to resolve."""

    reference: JSON
    resources: tuple[JSON, ...]


def facility_of(source: str) -> str | None:
    """The sending facility of a participant source (``hospital:<MSH-4>``); None for platforms."""
    kind, _, facility = source.partition(":")
    return facility or None if kind == "hospital" else None


def hospital(facility: str) -> JSON:
    """The sending hospital (MSH-4) as an Organization: what its doctors act for and its units belong to."""
    system, value, oid = _hospital_key(facility) if len(facility) > MEMO_LONGEST else _known_hospital(facility)
    return {
        "resourceType": "Organization",
        "id": oid,
        "meta": {"profile": [PROFILE_ORGANIZATION]},
        "identifier": [{"type": INTERNAL_ID, "system": system, "value": value}],
        "name": value,  # MSH-4 as the gateway keys it (the same from a stay's meta.source and from a ROL)
    }


def _hospital_key(facility: str) -> tuple[str, str, str]:
    """The hospital's identifier system, value and resource id."""
    system = local_system("sender")
    value = local_system("sender", facility).rsplit("/", 1)[-1]
    return system, value, resource_id("Organization", f"{system}|{value}")


#: the few sending facilities, each named by several members of every message and by every circle's fold
_known_hospital = lru_cache(maxsize=256)(_hospital_key)


def unit(provider: JSON, facility: str | None) -> JSON:
    """A unit in charge (a movement's ``serviceProvider``: identifier and name) as a UF Organization."""
    ident = provider["identifier"]
    out: JSON = {
        "resourceType": "Organization",
        "id": resource_id("Organization", f"{ident['system']}|{ident['value']}"),
        "meta": {"profile": [PROFILE_UF]},
        "identifier": [{"type": INTERNAL_ID, "system": ident["system"], "value": ident["value"]}],
        "type": [UF_TYPE],
    }
    if provider.get("display"):
        out["name"] = provider["display"]
    if facility:
        out["partOf"] = _reference(hospital(facility))
    return out


def practitioner_role(practitioner: JSON, organization: JSON | None) -> JSON:
    """The role of a practitioner (a ``Practitioner/<id>`` Reference to him) for an organization, or none."""
    pid = str(practitioner["reference"]).removeprefix("Practitioner/")
    rid = pid if organization is None else f"{pid}{ROLE_ID_SEPARATOR}{organization['id'][:16]}"
    out: JSON = {
        "resourceType": "PractitionerRole",
        "id": rid,
        "meta": {"profile": [PROFILE_ROLE]},
        "practitioner": _kept(practitioner, "reference", "display"),
    }
    if organization is not None:
        out["organization"] = _reference(organization)
    return out


def practitioner_of_role(reference: str) -> str | None:
    """``Practitioner/<id>`` behind a ``PractitionerRole/<id>[-<org>]`` reference made by this module."""
    if not reference.startswith("PractitionerRole/"):
        return None
    return "Practitioner/" + reference.removeprefix("PractitionerRole/").split(ROLE_ID_SEPARATOR, 1)[0]


def member(reference: JSON, *, role: str, source: str) -> Member:
    """A hospital-sourced member (a Practitioner or a unit Reference) as CDS wants it, with its resources."""
    facility = facility_of(source)
    target = str(reference.get("reference", ""))
    if target.startswith("Practitioner/"):
        organization = hospital(facility) if facility and role in HOSPITAL_ROLES else None
        found = practitioner_role(reference, organization)
        kept = _kept(reference, "identifier", "display")
        made = (found,) if organization is None else (found, organization)
        return Member({"reference": f"PractitionerRole/{found['id']}", **kept}, made)
    ident = reference.get("identifier") or {}
    if not target and ident.get("system") and ident.get("value"):
        organization = unit(reference, facility)
        made = (organization,) if facility is None else (organization, hospital(facility))
        return Member({"reference": f"Organization/{organization['id']}", **reference}, made)
    return Member(reference, ())


def unit_reference(unit_fact: JSON | None) -> JSON | None:
    """A unit fact of the engine (``unit_xon``: system, code, name) as a logical Reference (a movement's
    ``serviceProvider``, the circle's unit member before :func:`member` resolves it)."""
    if not unit_fact:
        return None
    return {
        "identifier": {"system": unit_fact["system"], "value": unit_fact["code"]},
        **({"display": unit_fact["name"]} if unit_fact.get("name") else {}),
    }


def of_message(
    *,
    facility: str,
    participations: list[JSON],
    encounter: JSON | None,
    movement: JSON | None,
) -> list[JSON]:
    """The directory resources the members a message names need (roles of its doctors, its unit in
    charge, the hospital), sorted: written with the message, whatever the circle then makes of them."""
    source = f"hospital:{facility}"
    named: list[tuple[JSON, str]] = [(p["member"], str(p["role"])) for p in participations if p.get("member")]
    for participant in (encounter or {}).get("participant", []):
        code = next((c.get("code") for t in participant.get("type", []) for c in t.get("coding", [])), None)
        role = STAY_ROLES.get(str(code))
        if role and participant.get("individual"):
            named.append((participant["individual"], role))
    provider = unit_reference((movement or {}).get("medical_unit"))
    if provider:
        named.append((provider, "UF"))
    made = [r for ref, role in named for r in member(ref, role=role, source=source).resources]
    found = {(r["resourceType"], r["id"]): r for r in made}
    return [found[key] for key in sorted(found)]


def _kept(source: JSON, first: str, second: str) -> JSON:
    """The two elements of ``source`` that are set (neither empty nor missing), in that order."""
    out: JSON = {}
    value = source.get(first)
    if value:
        out[first] = value
    value = source.get(second)
    if value:
        out[second] = value
    return out


def _reference(resource: JSON) -> JSON:
    out: JSON = {"reference": f"{resource['resourceType']}/{resource['id']}"}
    if resource.get("name"):
        out["display"] = resource["name"]
    return out
