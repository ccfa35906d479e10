"""Flux 3 (EmissionEvenement): the ``NdE_EventDeclarationNdE`` CommunicationRequests a stay's facts declare.

The gateway is the emitter for the hospitals it hears: each ADT insert whose trigger expresses a TRE_R254
event type (``mappings/codes/ADT_to_TRE_R254.csv``) declares that event for the stay, one declaration per
stay and event type. Declarations are derived from the folded facts, like everything else, so arrival
order does not matter: a correction (Z99) restates the event time, a cancellation (A11, A13) revokes the
declaration (``status: revoked``), and a cancelled cancellation brings it back.

Shape, per the profile: the subject Patient and the requester Organization (the sending facility) are
``contained``; EventType and EventTime extensions; one ``payload``; ``authoredOn`` is when the sender
recorded the event. The contained Patient keeps the gateway Patient's id as its local id, so searches
and subscription filters on ``subject``/``patient`` find the real patient (``#<id>`` = ``Patient/<id>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from gateway.mapping.ids import resource_id
from gateway.mapping.tables import CodeRow
from gateway.state.visits import VisitFact, event_moment
from gateway.subscriptions.nde import EXT_EVENT_TIME, EXT_EVENT_TYPE, FR_CORE, JSON, PROFILE_DECLARATION

DECLARANT_ID: Final = "declarant"
PROFILE_ORGANIZATION: Final = f"{FR_CORE}/fr-core-organization"
#: The event's edge of the movement: a discharge happened at its end (PV1-45), the rest at their start.
EDGE_BY_KIND: Final = {"discharge": "end"}


def declaration_id(stay_id: str, code: str) -> str:
    return resource_id("CommunicationRequest", f"nde|{stay_id}|{code}")


def declarations(
    *,
    stay: JSON,
    inserts: list[tuple[VisitFact, bool]],
    patient: JSON | None,
    event_types: Mapping[str, CodeRow],
) -> list[JSON]:
    """One declaration per TRE_R254 event type the stay's inserts express (pure: same facts, same output)."""
    if patient is None or not patient.get("id"):
        return []  # no subject to declare about
    by_code: dict[str, list[tuple[VisitFact, bool]]] = {}
    for insert, is_live in inserts:
        row = event_types.get(insert.trigger)
        if row is not None:
            by_code.setdefault(row.target_code, []).append((insert, is_live and stay.get("status") != "cancelled"))
    out = []
    for code, facts in sorted(by_code.items()):
        live = [f for f, alive in facts if alive]
        fact = (live or [f for f, _ in facts])[-1]
        out.append(
            _declaration(
                stay, fact, patient, event_types[fact.trigger], status="active" if live else "revoked", code=code
            )
        )
    return out


def _declaration(stay: JSON, fact: VisitFact, patient: JSON, row: CodeRow, *, status: str, code: str) -> JSON:
    source = (stay.get("meta") or {}).get("source")
    meta: JSON = {"profile": [PROFILE_DECLARATION]}
    if source:
        meta["source"] = source
    return {
        "resourceType": "CommunicationRequest",
        "id": declaration_id(str(stay["id"]), code),
        "meta": meta,
        "contained": [contained_patient(patient), _declarant(source)],
        "extension": [
            {"url": EXT_EVENT_TYPE, "valueCodeableConcept": {"coding": [row.coding()]}},
            {"url": EXT_EVENT_TIME, "valueDateTime": event_moment(fact, EDGE_BY_KIND.get(fact.kind, "start"))},
        ],
        "status": status,
        "subject": {"reference": f"#{patient['id']}"},
        "encounter": {"reference": f"Encounter/{stay['id']}"},
        "payload": [{"contentString": f"{row.target_display} ({code})"}],
        "authoredOn": fact.recorded_at.isoformat(),
        "requester": {"reference": f"#{DECLARANT_ID}"},
    }


def contained_patient(patient: JSON) -> JSON:
    """The stored Patient as a contained resource: no versionId or lastUpdated (dom-4), no narrative."""
    meta = {k: v for k, v in (patient.get("meta") or {}).items() if k not in ("versionId", "lastUpdated", "source")}
    out = {k: v for k, v in patient.items() if k not in ("meta", "text")}
    if meta:
        out = {"resourceType": "Patient", "id": patient["id"], "meta": meta, **out}
    return out


def _declarant(source: str | None) -> JSON:
    """The sending facility (MSH-4, recorded in the stay's ``meta.source``) as a FR Core Organization."""
    system, _, facility = str(source or "").rpartition("/")
    org: JSON = {
        "resourceType": "Organization",
        "id": DECLARANT_ID,
        "meta": {"profile": [PROFILE_ORGANIZATION]},
    }
    if system and facility:
        org["identifier"] = [{"system": system, "value": facility}]
    org["name"] = f"Établissement {facility}" if facility else "Établissement émetteur"
    return org
