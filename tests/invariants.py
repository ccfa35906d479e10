"""Rule checks every golden case must pass: valid R4 resources, references resolve, sound ids, no empty
elements, codes from their value sets, profiles declared and conformed to (``tests/validation.py``).

``check_resources(resources)`` raises one ``AssertionError`` listing every problem found (with the path of
each), so a failing golden case says everything that is wrong at once; ``problems(resources)`` returns the
same list for tests that want to assert on it. fhir.resources validates structure and types but accepts any
string as a code, hence the value-set checks here. Allowed codes come from the FHIR R4 required bindings
and from the mapping tables' target columns (``mappings/codes``), never from the gateway's output.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from tests.validation import CORE, validate, validator

CODES_DIR = Path(__file__).resolve().parent.parent / "mappings" / "codes"

ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
RELATIVE_REFERENCE = re.compile(
    r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-\.]{1,64})(?:/_history/[A-Za-z0-9\-\.]{1,64})?"
)
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"

# FHIR R4 required bindings for the elements the gateway fills.
ENCOUNTER_STATUS = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
ENCOUNTER_LOCATION_STATUS = frozenset({"planned", "active", "reserved", "completed"})
GENDER = frozenset({"male", "female", "other", "unknown"})
NAME_USE = frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"})
ADDRESS_USE = frozenset({"home", "work", "temp", "old", "billing"})
CONTACT_SYSTEM = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
CONTACT_USE = frozenset({"home", "work", "temp", "old", "mobile"})
IDENTIFIER_USE = frozenset({"usual", "official", "temp", "secondary", "old"})
#: Resource types the gateway produces: each claims an FR Core 2.1.0 / CDS 2.0.1 profile and conforms to it.
PROFILED = ("Patient", "Encounter", "Practitioner", "PractitionerRole", "Organization", "CareTeam")


@cache
def table_targets(table: str) -> frozenset[tuple[str, str]]:
    """(target_system, target_code) pairs of a mapping code table: the codes the gateway may emit."""
    with (CODES_DIR / f"{table}.csv").open(encoding="utf-8", newline="") as fh:
        return frozenset(
            ((row.get("target_system") or "").strip(), row["target_code"].strip()) for row in csv.DictReader(fh)
        )


def check_resources(resources: list[dict[str, Any]]) -> None:
    """Fail with every invariant the set of resources breaks."""
    found = problems(resources)
    if found:
        raise AssertionError(f"{len(found)} invariant violation(s):\n  " + "\n  ".join(found))


def problems(resources: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    out += _ids(resources)
    for index, resource in enumerate(resources):
        where = f"{resource.get('resourceType', '?')}/{resource.get('id', f'#{index}')}"
        out += [f"{where}: {p}" for p in _valid_fhir(resource)]
        out += [f"{where}: {p}" for p in _empty_elements(resource, "")]
        out += [f"{where}: {p}" for p in _codes(resource)]
        out += [f"{where}: {p}" for p in _profile(resource)]
        if resource.get("resourceType") in PROFILED:  # others (NdE CommunicationRequest…) check their own
            out += [f"{where}: {p}" for p in validate(resource)]
    out += _references(resources)
    out += _reference_targets(resources)
    return out


# -- the checks ------------------------------------------------------------------------------


def _ids(resources: list[dict[str, Any]]) -> list[str]:
    out = []
    seen: set[tuple[str, str]] = set()
    for index, resource in enumerate(resources):
        kind, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(kind, str) or not kind:
            out.append(f"resource #{index} has no resourceType")
            continue
        if not isinstance(rid, str) or not ID.fullmatch(rid):
            out.append(f"{kind} #{index}: id {rid!r} is not [A-Za-z0-9-.]{{1,64}}")
            continue
        if (kind, rid) in seen:
            out.append(f"{kind}/{rid} appears twice in the set")
        seen.add((kind, rid))
    return out


def _valid_fhir(resource: dict[str, Any]) -> list[str]:
    kind = resource.get("resourceType")
    if not isinstance(kind, str):
        return []
    try:
        model = get_fhir_model_class(kind)
    except (KeyError, ValueError) as exc:
        return [f"unknown resource type: {exc}"]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [f"not a valid R4B {kind}: {error['loc']}: {error['msg']}" for error in exc.errors()]
    return []


def _empty_elements(node: Any, path: str) -> Iterator[str]:
    if node is None:
        yield f"{path or '(root)'} is null"
    elif isinstance(node, str):
        if not node.strip():
            yield f"{path} is an empty or blank string"
    elif isinstance(node, dict):
        if not node:
            yield f"{path or '(root)'} is an empty object"
        for key, value in node.items():
            yield from _empty_elements(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        if not node:
            yield f"{path} is an empty array"
        for i, value in enumerate(node):
            yield from _empty_elements(value, f"{path}[{i}]")


def _references(resources: list[dict[str, Any]]) -> list[str]:
    present = {(r.get("resourceType"), r.get("id")) for r in resources}
    out = []
    for resource in resources:
        where = f"{resource.get('resourceType')}/{resource.get('id')}"
        for path, ref in _walk_references(resource, ""):
            value = ref.get("reference")
            if value is None:
                if not ref.get("identifier"):
                    out.append(f"{where}: {path} has neither a reference nor a logical identifier")
                continue
            if str(value).startswith("#"):
                # a reference to a contained resource (ANS NdE: subject and requester are contained)
                contained = {c.get("id") for c in resource.get("contained", [])}
                if str(value)[1:] not in contained:
                    out.append(f"{where}: {path}.reference {value!r} names no contained resource")
                continue
            match = RELATIVE_REFERENCE.fullmatch(str(value))
            if match is None:
                out.append(f"{where}: {path}.reference {value!r} is not a relative Type/id reference")
            elif (match["type"], match["id"]) not in present:
                out.append(f"{where}: {path}.reference {value!r} does not resolve inside the set")
    return out


def _reference_targets(resources: list[dict[str, Any]]) -> list[str]:
    """Each resolved reference points at a resource its profile allows there: of a target type, and (for
    an FR Core target profile) claiming that profile or one derived from it. fhircraft checks neither."""
    present = {(r.get("resourceType"), r.get("id")): r for r in resources}
    out = []
    for resource in resources:
        where = f"{resource.get('resourceType')}/{resource.get('id')}"
        for url in (resource.get("meta") or {}).get("profile") or []:
            for path, targets in _target_profiles(str(url)).items():
                for i, ref in enumerate(_at(resource, path.split(".")[1:])):
                    match = RELATIVE_REFERENCE.fullmatch(str(ref.get("reference", "")))
                    target = present.get((match["type"], match["id"])) if match else None
                    if target is not None and not any(_conforms(target, t) for t in targets):
                        out.append(
                            f"{where}: {path}[{i}] -> {ref['reference']} is not a target of {url.rsplit('/', 1)[-1]}"
                            f" ({', '.join(sorted(t.rsplit('/', 1)[-1] for t in targets))})"
                        )
    return out


@cache
def _target_profiles(url: str) -> dict[str, frozenset[str]]:
    """Element path → the target profiles its Reference type allows, from the profile's snapshot."""
    definition = validator().definitions.get(url.split("|", 1)[0]) or {}
    out: dict[str, set[str]] = {}
    for element in (definition.get("snapshot") or {}).get("element", []):
        path = str(element.get("path", ""))
        if "extension" in path.lower() or "[x]" in path:
            continue
        for kind in element.get("type", []):
            if kind.get("code") == "Reference" and kind.get("targetProfile"):
                out.setdefault(path, set()).update(str(t).split("|", 1)[0] for t in kind["targetProfile"])
    return {path: frozenset(targets) for path, targets in out.items()}


def _at(node: Any, keys: list[str]) -> list[dict[str, Any]]:
    """The dicts at a dotted element path, through lists."""
    nodes = node if isinstance(node, list) else [node]
    for key in keys:
        nodes = [v for n in nodes if isinstance(n, dict) for v in _listed(n.get(key))]
    return [n for n in nodes if isinstance(n, dict)]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _conforms(target: dict[str, Any], profile: str) -> bool:
    """A core profile asks for its type; another for itself or a profile derived from it."""
    if profile.startswith(CORE):
        return target.get("resourceType") == profile.removeprefix(CORE)
    definitions = validator().definitions
    if target.get("resourceType") != (definitions.get(profile) or {}).get("type"):
        return False
    for claimed in (target.get("meta") or {}).get("profile") or []:
        url: str | None = str(claimed).split("|", 1)[0]
        while url and url in definitions:
            if url == profile:
                return True
            url = definitions[url].get("baseDefinition")
    return False


def _walk_references(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Reference element: a dict with a ``reference`` key, or one of the known Reference slots."""
    if isinstance(node, dict):
        if "reference" in node:
            yield path, node
        for key, value in node.items():
            if key in REFERENCE_SLOTS and isinstance(value, dict) and "reference" not in value:
                yield f"{path}.{key}" if path else key, value
            yield from _walk_references(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_references(value, f"{path}[{i}]")


#: Elements of type Reference the gateway fills: checked even when they carry no ``reference``.
REFERENCE_SLOTS = frozenset({"subject", "individual", "location", "serviceProvider", "partOf", "managingOrganization"})


def _codes(resource: dict[str, Any]) -> list[str]:
    out: list[str] = []
    kind = resource.get("resourceType")
    if kind == "Patient":
        out += _patient_codes(resource)
    if kind == "Encounter":
        out += _encounter_codes(resource)
    for path, ident in _walk_identifiers(resource, ""):
        if "use" in ident and ident["use"] not in IDENTIFIER_USE:
            out.append(f"{path}.use {ident['use']!r} is not an R4 identifier-use")
        for i, coding in enumerate((ident.get("type") or {}).get("coding", [])):
            pair = (coding.get("system", ""), coding.get("code", ""))
            if pair not in table_targets("IdentifierType") | table_targets("InsAuthority_to_IdentifierType"):
                out.append(f"{path}.type.coding[{i}] {pair} is not a target of an identifier type table")
    return out


def _patient_codes(patient: dict[str, Any]) -> list[str]:
    out = []
    if "gender" in patient and patient["gender"] not in GENDER:
        out.append(f"gender {patient['gender']!r} is not in administrative-gender")
    for i, name in enumerate(patient.get("name", [])):
        if "use" in name and name["use"] not in NAME_USE:
            out.append(f"name[{i}].use {name['use']!r} is not an R4 name-use")
    for i, address in enumerate(patient.get("address", [])):
        if "use" in address and address["use"] not in ADDRESS_USE:
            out.append(f"address[{i}].use {address['use']!r} is not an R4 address-use")
    for i, telecom in enumerate(patient.get("telecom", [])):
        if telecom.get("system") not in CONTACT_SYSTEM:
            out.append(f"telecom[{i}].system {telecom.get('system')!r} is not an R4 contact-point-system")
        if "use" in telecom and telecom["use"] not in CONTACT_USE:
            out.append(f"telecom[{i}].use {telecom['use']!r} is not an R4 contact-point-use")
    return out


def _encounter_codes(encounter: dict[str, Any]) -> list[str]:
    out = []
    if encounter.get("status") not in ENCOUNTER_STATUS:
        out.append(f"status {encounter.get('status')!r} is not an R4 encounter-status")
    klass = encounter.get("class") or {}
    pair = (klass.get("system", ""), klass.get("code", ""))
    if pair not in table_targets("PatientClass_to_EncounterClass") and pair != (NULL_FLAVOR, "UNK"):
        out.append(f"class {pair} is neither a PatientClass_to_EncounterClass target nor NullFlavor UNK")
    for i, participant in enumerate(encounter.get("participant", [])):
        for j, concept in enumerate(participant.get("type", [])):
            for k, coding in enumerate(concept.get("coding", [])):
                pair = (coding.get("system", ""), coding.get("code", ""))
                if pair not in table_targets("ParticipationType"):
                    out.append(f"participant[{i}].type[{j}].coding[{k}] {pair} is not in ParticipationType.csv")
    disposition = (encounter.get("hospitalization") or {}).get("dischargeDisposition") or {}
    for i, coding in enumerate(disposition.get("coding", [])):
        pair = (coding.get("system", ""), coding.get("code", ""))
        if pair not in table_targets("DischargeDisposition"):
            out.append(f"hospitalization.dischargeDisposition.coding[{i}] {pair} is not in table 0112 FR")
    for i, location in enumerate(encounter.get("location", [])):
        if "status" in location and location["status"] not in ENCOUNTER_LOCATION_STATUS:
            out.append(f"location[{i}].status {location['status']!r} is not an R4 encounter-location-status")
    return out


def _walk_identifiers(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if key == "identifier":
                items = value if isinstance(value, list) else [value]
                for i, ident in enumerate(items):
                    if isinstance(ident, dict):
                        yield (f"{sub}[{i}]" if isinstance(value, list) else sub), ident
            yield from _walk_identifiers(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_identifiers(value, f"{path}[{i}]")


def _profile(resource: dict[str, Any]) -> list[str]:
    if resource.get("resourceType") not in PROFILED:
        return []
    profiles = (resource.get("meta") or {}).get("profile")
    if not profiles or not all(isinstance(p, str) and p.startswith("http") for p in profiles):
        return ["meta.profile is missing (FR Core / CDS profile expected)"]
    return []
