"""ANS "Notification d'Événements" 3.0.0 (``ans.fhir.fr.nde``): its canonical URLs and shared helpers.

NdE is a dialect over the gateway's one event stream: its subscriptions (flux 1/2) are stored like any
Subscription, its event declarations (flux 3) are CommunicationRequests written by the ingest transaction,
and its notification orders (flux 4) leave through the same outbox, in order, signed and retried.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from gateway.canonical import FR_CORE_SD, TRE_R254_SYSTEM

JSON = dict[str, Any]

IG: Final = "https://interop.esante.gouv.fr/ig/fhir/nde"
SD: Final = f"{IG}/StructureDefinition"
PROFILE_SUBSCRIPTION: Final = f"{SD}/nde-subscription"
PROFILE_DECLARATION: Final = f"{SD}/nde-eventdeclaration"
PROFILE_ORDER: Final = f"{SD}/nde-notificationrequest"

EXT_EVENT_TYPE: Final = f"{SD}/event-type"
EXT_EVENT_TIME: Final = f"{SD}/event-time"
EXT_EVENT_EMISSION_TIME: Final = f"{SD}/event-emission-time"
EXT_START: Final = f"{SD}/start"
EXT_SUBJECT: Final = f"{SD}/subject"
EXT_DECLARANT: Final = f"{SD}/declarant"
EXT_SUBSCRIBER: Final = f"{SD}/subscriber"
EXT_SUBSCRIPTION_DATE: Final = f"{SD}/subscription-date"
EXT_RECIPIENT_ENDPOINT: Final = f"{SD}/recipient-endpoint"

#: TRE_R254-TypeEvenement, the code system of JDV_J46 (the binding of the event-type extension).
EVENT_TYPE_SYSTEM: Final = TRE_R254_SYSTEM
#: The NdE CapabilityStatements (FSH ids under the IG canonical) for the roles the gateway plays.
CAPABILITY_SUBSCRIPTION_MANAGER: Final = f"{IG}/CapabilityStatement/NdE-GestionnaireDAbonnements"
CAPABILITY_NOTIFICATION_MANAGER: Final = f"{IG}/CapabilityStatement/NdE-GestionnaireDeNotifications"
CAPABILITY_EMITTER: Final = f"{IG}/CapabilityStatement/NdE-Emetteur"

#: Where the dialect is recorded on a subscription (``subscriptions.dialect``).
DIALECT: Final = "nde"

#: FR Core profiles the contained resources may claim (NdE: "le profil français doit être utilisé").
FR_CORE: Final = FR_CORE_SD
CONTAINED_TYPES: Final = frozenset({"Patient", "Practitioner", "Organization", "RelatedPerson"})


def extensions(element: JSON | None, url: str) -> list[JSON]:
    return [e for e in (element or {}).get("extension", []) if isinstance(e, dict) and e.get("url") == url]


def event_type_codes(resource: JSON) -> list[tuple[str, str]]:
    """(system, code) of the event-type extension's codings."""
    out = []
    for ext in extensions(resource, EXT_EVENT_TYPE):
        for coding in (ext.get("valueCodeableConcept") or {}).get("coding", []):
            if isinstance(coding, dict) and coding.get("code"):
                out.append((str(coding.get("system") or ""), str(coding["code"])))
    return out


def contained(resource: JSON, reference: str | None) -> JSON | None:
    """The contained resource a ``#id`` reference names, if any."""
    if not reference or not reference.startswith("#"):
        return None
    wanted = reference[1:]
    for item in resource.get("contained", []):
        if isinstance(item, dict) and item.get("id") == wanted:
            return item
    return None


def join_tokens(values: Iterable[str]) -> str:
    return ",".join(v.replace("\\", "\\\\").replace(",", "\\,") for v in values)


def contained_subject(resource: JSON) -> JSON | None:
    """The contained Patient an NdE CommunicationRequest's ``subject`` names."""
    if resource.get("resourceType") != "CommunicationRequest":
        return None
    found = contained(resource, str((resource.get("subject") or {}).get("reference", "")))
    return found if found and found.get("resourceType") == "Patient" else None
