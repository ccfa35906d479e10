"""The audit trail: who (client) accessed what, when, about which patient, and with what outcome.

Records are collected by the policy point as repositories hand back patient data (``heard``), then
written in one insert when the request ends. Operators read them as FHIR ``AuditEvent`` resources shaped
like IHE BALP (Basic Audit Log Patterns), which the ANS "Traçabilité des événements" guide follows:
``type`` = ``rest`` and ``subtype`` = the RESTful interaction, ``agent`` = the client (requestor) and the
gateway, ``entity`` = the resource and the patient (role 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.db.access import AuditRecord, AuditRepo
from gateway.db.engine import Database as Engine
from gateway.db.engine import transaction

if TYPE_CHECKING:
    from gateway.auth.policy import Principal
    from gateway.db.repo import StoredResource

JSON = dict[str, Any]
PATIENT_DATA = frozenset({"Patient", "Encounter", "CareTeam"})
ACTIONS = {
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "search-type": "E",
    "notify": "R",
    "events": "R",
    "raw": "R",
}
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
GATEWAY_SUBTYPES = "https://gateway.example.org/fhir/CodeSystem/audit-subtype"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
#: outcome codes of AuditEvent.outcome (R4)
SUCCESS, MINOR_FAILURE = "0", "4"


def patient_of(resource: StoredResource) -> str | None:
    if resource.type == "Patient":
        return resource.id
    ref = str((resource.content.get("subject") or {}).get("reference", ""))
    return ref.removeprefix("Patient/") if ref.startswith("Patient/") else None


class AuditTrail:
    """One request's audit records, written together at its end."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.records: list[AuditRecord] = []

    def _add(self, subtype: str, entity: str, patient: str | None, outcome: str, detail: str | None = None) -> None:
        self.records.append(
            AuditRecord(
                recorded_at=datetime.now(UTC),
                client_id=self.principal.client_id,
                client_name=self.principal.name,
                action=ACTIONS.get(subtype, "R"),
                subtype=subtype,
                entity=entity,
                patient=patient,
                outcome=outcome,
                detail=detail,
            )
        )

    def heard(self, interaction: str, rtype: str, found: Sequence[StoredResource]) -> None:
        """A filtered repository returned ``found``: one record per patient-data resource."""
        if rtype not in PATIENT_DATA:
            return
        for resource in found:
            self._add(interaction, f"{resource.type}/{resource.id}", patient_of(resource), SUCCESS)
        if not found and interaction != "search-type":
            self._add(interaction, rtype, None, MINOR_FAILURE, "not found or not visible")

    def events(self, focuses: Sequence[tuple[str, str | None]]) -> None:
        """``$events`` handed back past events: (focus reference, patient id) of each."""
        for focus, patient in focuses:
            self._add("events", focus, patient, SUCCESS)

    def raw_message(self, message_id: int) -> None:
        self._add("raw", f"message/{message_id}", None, SUCCESS)

    def failed(self, what: str, detail: str) -> None:
        self._add("denied", what, None, MINOR_FAILURE, detail[:500])

    def flush(self, db: Engine) -> None:
        if not self.records:
            return
        with transaction(db) as conn:
            AuditRepo(conn).add(self.records)
        self.records = []


def event_patient(focus_type: str | None, focus_id: str | None, context: Sequence[JSON]) -> str | None:
    """The patient an outbox event is about: the focus itself, or the Patient its context names."""
    if focus_type == "Patient":
        return focus_id
    refs = [str(c.get("reference", "")) for c in context]
    return next((r.removeprefix("Patient/") for r in refs if r.startswith("Patient/")), None)


def notification_records(
    *, client_id: str, client_name: str, patients: Sequence[tuple[str, str | None]], topic: str, now: datetime
) -> list[AuditRecord]:
    """A notification sent: one record per (focus, patient) it carried."""
    return [
        AuditRecord(
            recorded_at=now,
            client_id=client_id,
            client_name=client_name,
            action="R",
            subtype="notify",
            entity=focus,
            patient=patient,
            outcome=SUCCESS,
            detail=topic,
        )
        for focus, patient in patients
    ]


def audit_event(record: AuditRecord, *, base_url: str) -> JSON:
    """An R4 AuditEvent (BALP-like) for one record."""
    interaction = record.subtype in {"read", "vread", "history-instance", "search-type"}
    subtype = {"system": INTERACTION if interaction else GATEWAY_SUBTYPES, "code": record.subtype}
    entities: list[JSON] = []
    if "/" in record.entity and not record.entity.startswith("message/"):
        entities.append({"what": {"reference": record.entity}, "role": {"system": OBJECT_ROLE, "code": "4"}})
    elif record.entity:
        entities.append({"name": record.entity, "role": {"system": OBJECT_ROLE, "code": "4"}})
    if record.patient:
        entities.append(
            {"what": {"reference": f"Patient/{record.patient}"}, "role": {"system": OBJECT_ROLE, "code": "1"}}
        )
    event: JSON = {
        "resourceType": "AuditEvent",
        "id": str(record.id),
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [subtype],
        "action": record.action,
        "recorded": record.recorded_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": record.outcome,
        "agent": [
            {
                "who": {"identifier": {"system": f"{base_url}/clients", "value": record.client_id}},
                "name": record.client_name,
                "requestor": True,
            }
        ],
        "source": {"observer": {"display": "HL7 v2 → FHIR gateway"}},
        "entity": entities,
    }
    if record.detail:
        event["outcomeDesc"] = record.detail
    return event
