"""The CapabilityStatement: what this server reads and searches, and its subscription topics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway import __version__
from gateway.subscriptions.topics import TOPICS

TOPIC_CANONICAL_EXT = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
BACKPORT_IG = "http://hl7.org/fhir/uv/subscriptions-backport/ImplementationGuide/hl7.fhir.uv.subscriptions-backport"
#: The French guides every produced resource conforms to (its meta.profile), with their versions.
FR_CORE_IG = "https://hl7.fr/ig/fhir/core/ImplementationGuide/hl7.fhir.fr.core|2.1.0"
CDS_IG = "https://interop.esante.gouv.fr/ig/fhir/cds/ImplementationGuide/ans.fhir.fr.cds|2.0.1"

#: type → search parameters (name, type, documentation)
SEARCH_PARAMS: dict[str, list[tuple[str, str, str]]] = {
    "Patient": [
        ("_id", "token", "logical id"),
        ("identifier", "token", "IPP, INS (VALI only): [system|]value"),
    ],
    "Encounter": [
        ("_id", "token", "logical id"),
        ("identifier", "token", "visit number (VN): [system|]value"),
        ("patient", "reference", "Patient/<id>"),
        ("part-of", "reference", "Encounter/<stay id>: the movements of a stay"),
        ("subject", "reference", "Patient/<id>"),
        ("status", "token", "planned | in-progress | onleave | finished | cancelled"),
        ("class", "token", "v3-ActCode code"),
    ],
    "Practitioner": [
        ("_id", "token", "logical id"),
        ("identifier", "token", "RPPS, idNatPs (8 + RPPS) or local id: [system|]value"),
    ],
    "CareTeam": [
        ("_id", "token", "logical id"),
        ("patient", "reference", "Patient/<id>: the patient's care circle"),
        ("subject", "reference", "Patient/<id>"),
        ("participant", "reference", "Practitioner/<id> or Organization reference: circles a member belongs to"),
        ("participant.identifier", "token", "a member's RPPS (either form: RPPS system or idNatPs OID) or local id"),
        ("status", "token", "active | inactive"),
    ],
    "Subscription": [("_id", "token", "logical id"), ("status", "token", "requested | active | error | off")],
}


def capability_statement(*, base_url: str, now: datetime) -> dict[str, Any]:
    resources = []
    for rtype, params in SEARCH_PARAMS.items():
        interactions = [{"code": c} for c in ("read", "vread", "history-instance", "search-type")]
        if rtype == "Subscription":
            interactions += [{"code": "create"}, {"code": "update"}, {"code": "delete"}]
        if rtype == "CareTeam":
            interactions.append({"code": "update"})
        resources.append(
            {
                "type": rtype,
                "versioning": "versioned",
                "readHistory": True,
                "interaction": interactions,
                "searchParam": [{"name": n, "type": t, "documentation": d} for n, t, d in params],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now.date().isoformat(),
        "publisher": "HL7 v2 → FHIR gateway for e-parcours platforms",
        "kind": "instance",
        "software": {"name": "hl7-fhir-gateway", "version": __version__},
        "implementation": {"description": "IHE PAM France ADT feeds as FHIR R4", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "implementationGuide": [BACKPORT_IG, FR_CORE_IG, CDS_IG],
        "rest": [
            {
                "mode": "server",
                "extension": [{"url": TOPIC_CANONICAL_EXT, "valueCanonical": t.url} for t in TOPICS],
                "resource": resources,
            }
        ],
    }
