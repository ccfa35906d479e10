"""Profile validation for the tests: every resource against the FR Core 2.1.0 / ANS CDS 2.0.1 profiles it claims.

``validate(resource) -> list[str]`` checks a resource against each URL of its ``meta.profile`` and returns
every error found (an empty list when it conforms). It is what the invariant checks call on every golden
case and every API answer; other tests may call it on their own resources.

- The validating models are built by fhircraft (``FHIRModelFactory``), offline, from the published FR
  Core package read where the standards live (``../shared/standards/fr-core-2.1.0/package.tgz``, or
  ``GATEWAY_STANDARDS_DIR``): the package is never copied into the repository.
- Three core FHIR extensions that FR Core profiles name but its package does not ship are declared below
  (``CORE_EXTENSIONS``: url, value type, context), as the standards README says they must be.
- ANS CDS 2.0.1 is published as FSH, not as a package: ``CDS_CARETEAM`` restates the constraints of
  ``input/fsh/profiles/CDS_IHECareTeam.fsh`` as a StructureDefinition differential over R4 CareTeam, and
  fhircraft builds the model from it like any other profile. The member reference targets (Annuaire's
  ``as-practitionerrole``, CDS's ``cds-related-person`` / ``cds-organization``) are checked by resource
  type: their own profiles are outside the two packages we hold.
- A claimed profile that cannot be found or built is an error, never a skip.
- Models are built lazily, once per process (the test session): registering a profile costs about a
  second, building one a fraction; validating a resource takes milliseconds.

fhircraft reports FHIR *warnings* (e.g. dom-6, "a resource should have narrative") as Python warnings;
they are not errors and are silenced here. Terminology bindings are not expanded (no terminology
server); the invariant checks in ``tests/invariants.py`` check the gateway's codes against its tables.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
import warnings
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

ROOT = Path(__file__).resolve().parent.parent
STANDARDS = Path(os.environ.get("GATEWAY_STANDARDS_DIR", ROOT.parent / "shared" / "standards"))
FR_CORE_PACKAGE = STANDARDS / "fr-core-2.1.0" / "package.tgz"
CDS_CARETEAM_FSH = STANDARDS / "ans-cds-2.0.1" / "input" / "fsh" / "profiles" / "CDS_IHECareTeam.fsh"
FR_CORE = "https://hl7.fr/ig/fhir/core/StructureDefinition/"
CDS_CARETEAM_URL = "https://interop.esante.gouv.fr/ig/fhir/cds/StructureDefinition/cds-ihe-careteam"
CORE = "http://hl7.org/fhir/StructureDefinition/"

JSON = dict[str, Any]

#: Core R4 extensions FR Core profiles use that its package does not ship: url → (value type, context).
CORE_EXTENSIONS: dict[str, tuple[str, str]] = {
    f"{CORE}patient-birthPlace": ("Address", "Patient"),
    f"{CORE}humanname-assembly-order": ("code", "HumanName"),
    f"{CORE}organization-period": ("Period", "Organization"),
}

#: ANS CDS 2.0.1 CDSCareTeam (CDS_IHECareTeam.fsh), element by element: path → (min, max, reference
#: targets). Cardinalities and targets as the FSH states them; targets are core types (see above).
CDS_CARETEAM: dict[str, tuple[int | None, str | None, list[str]]] = {
    "CareTeam.meta": (1, None, []),
    "CareTeam.identifier": (1, "1", []),
    "CareTeam.identifier.value": (1, None, []),
    "CareTeam.status": (1, "1", []),
    "CareTeam.name": (1, "1", []),
    "CareTeam.subject": (1, "1", ["Patient"]),
    "CareTeam.encounter": (None, None, ["Encounter"]),
    "CareTeam.period": (1, "1", []),
    "CareTeam.period.start": (1, None, []),
    "CareTeam.participant.member": (1, None, ["PractitionerRole", "RelatedPerson", "Organization"]),
    "CareTeam.participant.period.start": (1, None, []),
}
#: Each CDSCareTeam participant has a period (its start is required): the FSH's "Chaque membre … dispose
#: d'une date de début"; restated as a cardinality so the model enforces it.
CDS_CARETEAM_EXTRA: dict[str, tuple[int | None, str | None, list[str]]] = {
    "CareTeam.participant.period": (1, None, []),
}


#: FHIRPath constraints left to ``tests/invariants.py``, which checks the same thing far faster: ele-1
#: ("All FHIR elements must have a @value or children") is its no-empty-elements rule, and evaluating it
#: on every element is most of fhircraft's validation time.
SKIPPED = ("ele-1",)


class ProfileError(Exception):
    """A claimed profile that cannot be found or built: the resource cannot be said to conform."""


class Validator:
    """One fhircraft factory for the session, with the FR Core package and the CDS CareTeam registered."""

    def __init__(self, package: Path = FR_CORE_PACKAGE) -> None:
        from fhircraft.fhir.resources.factory import FHIRModelFactory  # noqa: PLC0415 (heavy: on first use)

        if not package.is_file():
            raise ProfileError(f"FR Core package not found at {package} (set GATEWAY_STANDARDS_DIR)")
        if not CDS_CARETEAM_FSH.is_file():
            raise ProfileError(f"ANS CDS CareTeam profile not found at {CDS_CARETEAM_FSH}")
        self.factory = FHIRModelFactory("R4")
        self.factory.disable_internet_access()
        self.definitions = _package_definitions(package)
        self.definitions.update({url: _core_extension(url, *spec) for url, spec in CORE_EXTENSIONS.items()})
        self.definitions[CDS_CARETEAM_URL] = cds_careteam_definition()
        self._registered: set[str] = set()
        self._lock = threading.Lock()

    def model(self, url: str) -> type[BaseModel]:
        """The validating model of a profile, registering it and what it uses first."""
        url = url.split("|", 1)[0]
        with self._lock:
            if url not in self.definitions:
                raise ProfileError(f"profile {url} is in neither FR Core 2.1.0 nor ANS CDS 2.0.1")
            self._register(url)
            try:
                return self.factory.build(canonical_url=url)
            except Exception as exc:  # fhircraft raises its own errors and plain ones alike
                raise ProfileError(f"profile {url} cannot be built: {exc}") from exc

    def _register(self, url: str) -> None:
        from fhircraft.config import override_config  # noqa: PLC0415

        if url in self._registered or url not in self.definitions:
            return  # core definitions come with fhircraft itself
        self._registered.add(url)
        definition = self.definitions[url]
        for dependency in _profiles_used(definition):
            self._register(dependency)
        # The package is the published one: validating its StructureDefinitions again only costs time.
        with override_config(validation_mode="skip"):
            self.factory.register(definition)

    def validate(self, resource: JSON) -> list[str]:
        profiles = (resource.get("meta") or {}).get("profile") or []
        out: list[str] = []
        for url in profiles:
            try:
                model = self.model(str(url))
            except ProfileError as exc:
                out.append(str(exc))
                continue
            out += [f"{_short(url)}: {e}" for e in _errors(model, resource)]
        return out


def _errors(model: type[BaseModel], resource: JSON) -> list[str]:
    from fhircraft.config import override_config  # noqa: PLC0415

    with warnings.catch_warnings(), override_config(disable_fhir_warnings=True, disabled_fhir_constraints=SKIPPED):
        warnings.simplefilter("ignore")  # FHIR warnings (dom-6 narrative…): not errors
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            return [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
    return []


def _short(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _package_definitions(package: Path) -> dict[str, JSON]:
    """The StructureDefinitions of a FHIR npm package, by canonical URL, snapshots only.

    The differential is dropped: fhircraft builds from the snapshot, and two FR Core 2.1.0 extensions
    (schedule-availability-time, service-type-duration) have differential bindings without a strength,
    which its StructureDefinition model would refuse although their snapshots are sound.
    """
    out: dict[str, JSON] = {}
    with tarfile.open(package) as archive:
        for member in archive.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not (name.startswith("StructureDefinition-") and name.endswith(".json")):
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            definition = json.load(handle)
            definition.pop("differential", None)
            definition.pop("text", None)
            out[definition["url"]] = definition
    return out


def _profiles_used(definition: JSON) -> list[str]:
    """Profiles an element's type names (extensions, profiled datatypes) and a profile's own base."""
    used = [str(definition.get("baseDefinition", ""))]
    for element in (definition.get("snapshot") or definition.get("differential") or {}).get("element", []):
        for kind in element.get("type", []):
            used += [str(p).split("|", 1)[0] for p in kind.get("profile", [])]
    return [u for u in dict.fromkeys(used) if u]


def _core_extension(url: str, value_type: str, context: str) -> JSON:
    """A simple core extension's definition (one value of one type), enough to build and validate it."""
    name = url.rsplit("/", 1)[-1]
    value = f"value{value_type[0].upper()}{value_type[1:]}"
    elements: list[JSON] = [
        {
            "id": "Extension",
            "path": "Extension",
            "min": 0,
            "max": "*",
            "base": {"path": "Extension", "min": 0, "max": "*"},
        },
        {
            "id": "Extension.extension",
            "path": "Extension.extension",
            "min": 0,
            "max": "0",
            "base": {"path": "Element.extension", "min": 0, "max": "*"},
            "type": [{"code": "Extension"}],
        },
        {
            "id": "Extension.url",
            "path": "Extension.url",
            "min": 1,
            "max": "1",
            "base": {"path": "Extension.url", "min": 1, "max": "1"},
            "type": [{"code": "uri"}],
            "fixedUri": url,
        },
        {
            "id": f"Extension.value[x]:{value}",
            "path": "Extension.value[x]",
            "sliceName": value,
            "min": 1,
            "max": "1",
            "base": {"path": "Extension.value[x]", "min": 0, "max": "1"},
            "type": [{"code": value_type}],
        },
    ]
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "".join(part.capitalize() for part in name.split("-")),
        "status": "active",
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": "element", "expression": context}],
        "type": "Extension",
        "baseDefinition": f"{CORE}Extension",
        "derivation": "constraint",
        "snapshot": {"element": elements},
    }


def cds_careteam_definition() -> JSON:
    """CDSCareTeam as a StructureDefinition: R4 CareTeam's snapshot constrained as the FSH says."""
    from fhircraft.fhir.resources.definitions.registry import StructureDefinitionRegistry  # noqa: PLC0415

    base = StructureDefinitionRegistry("R4").get(f"{CORE}CareTeam").model_dump(mode="json", exclude_none=True)
    constraints = {**CDS_CARETEAM, **CDS_CARETEAM_EXTRA}
    elements = []
    for original in base["snapshot"]["element"]:
        element = dict(original)
        rule = constraints.get(element["path"])
        if rule is not None:
            minimum, maximum, targets = rule
            if minimum is not None:
                element["min"] = minimum
            if maximum is not None:
                element["max"] = maximum
            if targets:
                element["type"] = [{"code": "Reference", "targetProfile": [f"{CORE}{t}" for t in targets]}]
        elements.append(element)
    return {
        "resourceType": "StructureDefinition",
        "url": CDS_CARETEAM_URL,
        "name": "CDSCareTeam",
        "status": "active",
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": "CareTeam",
        "baseDefinition": f"{CORE}CareTeam",
        "derivation": "constraint",
        "snapshot": {"element": elements},
    }


_lock = threading.Lock()


@cache
def validator() -> Validator:
    """The session's validator (built on first use)."""
    return Validator()


def validate(resource: JSON) -> list[str]:
    """Every error of ``resource`` against the profiles of its ``meta.profile`` (empty: it conforms).

    Results are kept per resource content: the API tests read the same resources again and again.
    """
    key = json.dumps(resource, sort_keys=True, default=str)
    with _lock:
        if key not in _results:
            _results[key] = tuple(validator().validate(resource))
        return list(_results[key])


_results: dict[str, tuple[str, ...]] = {}
