"""The CapabilityStatement: what this server reads and searches, and its subscription topics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway import __version__
from gateway.subscriptions import nde
from gateway.subscriptions.topics import TOPICS

LAST_UPDATED = "when the resource last changed: eq ge gt le lt sa eb, repeat to AND"
TOPIC_CANONICAL_EXT = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
BACKPORT_IG = "http://hl7.org/fhir/uv/subscriptions-backport/ImplementationGuide/hl7.fhir.uv.subscriptions-backport"
#: The French guides every produced resource conforms to (its meta.profile), with their versions.
FR_CORE_IG = "https://hl7.fr/ig/fhir/core/ImplementationGuide/hl7.fhir.fr.core|2.1.0"
CDS_IG = "https://interop.esante.gouv.fr/ig/fhir/cds/ImplementationGuide/ans.fhir.fr.cds|2.0.1"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
BACKPORT_SERVER = f"{BACKPORT}/CapabilityStatement/backport-subscription-server-r4"
BACKPORT_SUBSCRIPTION = f"{BACKPORT}/StructureDefinition/backport-subscription"
#: Backport operations on Subscription: name → OperationDefinition canonical.
BACKPORT_OPERATIONS = {
    "status": f"{BACKPORT}/OperationDefinition/backport-subscription-status",
    "events": f"{BACKPORT}/OperationDefinition/backport-subscription-events",
}
NDE_IG = "https://interop.esante.gouv.fr/ig/fhir/nde/ImplementationGuide/ans.fhir.fr.nde"
#: The CapabilityStatements the gateway's own one says it meets: the Backport R4 server, and the three
#: ANS NdE roles it plays (subscription manager, notification manager, emitter for the hospitals).
INSTANTIATES = [
    BACKPORT_SERVER,
    nde.CAPABILITY_SUBSCRIPTION_MANAGER,
    nde.CAPABILITY_NOTIFICATION_MANAGER,
    nde.CAPABILITY_EMITTER,
]

#: type → search parameters (name, type, documentation): the one declaration of what is searchable. The
#: CapabilityStatement lists exactly these, ``gateway/fhir/search.py`` refuses any other, and each one
#: is extracted by ``gateway/db/indexing.py`` (tests/unit/test_search_params.py ties the two).
SEARCH_PARAMS: dict[str, list[tuple[str, str, str]]] = {
    "Patient": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("identifier", "token", "IPP, INS (VALI only): [system|]value"),
        ("active", "token", "false for a patient merged into another (A40)"),
    ],
    "Encounter": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("identifier", "token", "visit number (VN): [system|]value"),
        ("patient", "reference", "Patient/<id>"),
        ("part-of", "reference", "Encounter/<stay id>: the movements of a stay"),
        ("subject", "reference", "Patient/<id>"),
        ("status", "token", "planned | in-progress | onleave | finished | cancelled"),
        ("class", "token", "v3-ActCode code"),
    ],
    "Practitioner": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("identifier", "token", "RPPS, idNatPs (8 + RPPS) or local id: [system|]value"),
    ],
    "PractitionerRole": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("practitioner", "reference", "Practitioner/<id>: the roles of a practitioner"),
        ("organization", "reference", "Organization/<id>: the roles held for an organization"),
    ],
    "Organization": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("identifier", "token", "a hospital (MSH-4) or a unit (UF code) under the gateway's systems"),
        ("partof", "reference", "Organization/<id>: the units of a hospital"),
    ],
    "CareTeam": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("identifier", "token", "the circle's business identifier (CDS 2.0.1): [system|]value"),
        ("patient", "reference", "Patient/<id>: the patient's care circle"),
        ("subject", "reference", "Patient/<id>"),
        (
            "participant",
            "reference",
            "PractitionerRole/<id>, Organization/<id> or Practitioner/<id> (through "
            "his roles): circles a member belongs to",
        ),
        ("participant.identifier", "token", "a member's RPPS (either form: RPPS system or idNatPs OID) or local id"),
        ("status", "token", "active | inactive"),
        ("date", "date", "the circle's period overlaps the date (eq ge gt le lt sa eb)"),
        ("start", "date", "CDS: the circle's start, period.start (eq ge gt le lt sa eb)"),
        ("end", "date", "CDS: the circle's end, period.end"),
        ("participant-start", "date", "CDS: a member's start, participant.period.start"),
        ("participant-end", "date", "CDS: a member's end, participant.period.end"),
    ],
    "Subscription": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("status", "token", "requested | active | error | off"),
        ("url", "uri", "the topic canonical URL the subscription is for (Backport SHALL)"),
    ],
    "Basic": [("url", "uri", "a subscription topic by its canonical URL (Backport: R5 SubscriptionTopic as Basic)")],
    "CommunicationRequest": [
        ("_id", "token", "logical id"),
        ("_lastUpdated", "date", LAST_UPDATED),
        ("event-type", "token", "ANS NdE event type (TRE_R254): [system|]ADM or SOR"),
        ("subject", "reference", "Patient/<id>: the patient an NdE event declaration is about"),
        ("patient", "reference", "Patient/<id>"),
        ("patient.identifier", "token", "the patient's INS or IPP, [system|]value"),
        ("encounter", "reference", "Encounter/<stay id>"),
        ("status", "token", "active | revoked"),
    ],
}
#: ``_include`` values per type (``_include:iterate`` follows them from included resources too).
INCLUDES: dict[str, list[str]] = {
    "CareTeam": ["CareTeam:participant", "PractitionerRole:practitioner", "PractitionerRole:organization"],
    "PractitionerRole": ["PractitionerRole:practitioner", "PractitionerRole:organization"],
}


def _interactions(rtype: str) -> list[dict[str, str]]:
    if rtype == "Basic":
        return [{"code": "read"}, {"code": "search-type"}]
    codes = ["read", "vread", "history-instance", "search-type"]
    if rtype == "Subscription":
        codes += ["create", "update", "delete"]
    if rtype == "CareTeam":
        codes.append("update")
    if rtype == "CommunicationRequest":
        codes.append("create")  # NdE flux 3 (declarations) and flux 4 (orders) from others
    return [{"code": c} for c in codes]


def _resource(rtype: str, params: list[tuple[str, str, str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": rtype}
    if rtype == "Subscription":
        # Backport IG: the topics are advertised on the Subscription entry (context rest.resource).
        entry["extension"] = [{"url": TOPIC_CANONICAL_EXT, "valueCanonical": t.url} for t in TOPICS]
        entry["supportedProfile"] = [BACKPORT_SUBSCRIPTION, nde.PROFILE_SUBSCRIPTION]
    elif rtype == "CommunicationRequest":
        entry["supportedProfile"] = [nde.PROFILE_DECLARATION, nde.PROFILE_ORDER]
    if rtype != "Basic":
        entry |= {"versioning": "versioned", "readHistory": True}
    entry["interaction"] = _interactions(rtype)
    if rtype in INCLUDES:
        entry["searchInclude"] = INCLUDES[rtype]
    entry["searchParam"] = [{"name": n, "type": t, "documentation": d} for n, t, d in params]
    if rtype == "Subscription":
        entry["operation"] = [{"name": name, "definition": url} for name, url in BACKPORT_OPERATIONS.items()]
    return entry


def capability_statement(*, base_url: str, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now.date().isoformat(),
        "publisher": "HL7 v2 → FHIR gateway for e-parcours platforms",
        "kind": "instance",
        "instantiates": INSTANTIATES,
        "software": {"name": "hl7-fhir-gateway", "version": __version__},
        "implementation": {"description": "IHE PAM France ADT feeds as FHIR R4", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "implementationGuide": [BACKPORT_IG, NDE_IG, FR_CORE_IG, CDS_IG],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Subscription manager (Backport topics and ANS NdE flux 1/2), event declarations (NdE "
                    "flux 3, CommunicationRequest) and notification manager (NdE flux 4 received)."
                ),
                "resource": [_resource(rtype, params) for rtype, params in SEARCH_PARAMS.items()],
            },
            {
                "mode": "client",
                "documentation": (
                    "Emitter and subscription manager towards the platforms: NdE flux 4 notification orders "
                    "(POST {endpoint}/CommunicationRequest) and Backport notifications (POST {endpoint})."
                ),
                "resource": [
                    {
                        "type": "CommunicationRequest",
                        "supportedProfile": [nde.PROFILE_ORDER],
                        "interaction": [{"code": "create"}],
                    }
                ],
            },
        ],
    }
