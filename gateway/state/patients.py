"""Folding a patient's facts: demographics snapshots, deaths, merges.

- The snapshot with the latest event time describes the patient (ties broken by control id), whatever
  the arrival order; an A47 carries the full PID-3, so the latest snapshot also applies identifier
  changes and deletions.
- Death is sticky: it comes from the latest snapshot that says anything about it (PID-29/30 or a
  discharge by death), so a later A31 without PID-29/30 does not bring the patient back to life.
- A40: the merged patient gets ``link`` replaced-by and ``active = false``; the survivor ``link`` replaces.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

JSON = dict[str, Any]
PROFILE_PATIENT = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"
DEMOGRAPHICS, MERGED_INTO, ABSORBED = "demographics", "merged-into", "absorbed"


def patient_payload(*, patient: JSON, event_time: datetime, control_id: str) -> JSON:
    return {"kind": DEMOGRAPHICS, "event_time": event_time.isoformat(), "control_id": control_id, "patient": patient}


def merge_payloads(
    *, merged_id: str, merged_identifiers: list[JSON], survivor_id: str, event_time: datetime, control_id: str
) -> tuple[JSON, JSON]:
    """(fact for the merged patient's stream, fact for the survivor's stream)."""
    common = {"event_time": event_time.isoformat(), "control_id": control_id}
    merged = {
        **common,
        "kind": MERGED_INTO,
        "survivor": survivor_id,
        "id": merged_id,
        "identifiers": merged_identifiers,
    }
    absorbed = {**common, "kind": ABSORBED, "merged": merged_id}
    return merged, absorbed


def _order(payload: JSON) -> tuple[datetime, str]:
    return datetime.fromisoformat(payload["event_time"]), str(payload.get("control_id", ""))


def _has_death_info(patient: JSON) -> bool:
    return "deceasedDateTime" in patient or "deceasedBoolean" in patient


def _fold_protection(patient: JSON, snapshots: list[JSON]) -> None:
    """PD1-12 is sticky like death: the latest snapshot that said Y or N decides (``meta.security``)."""
    said = next((s["patient"]["meta"]["security"] for s in reversed(snapshots) if _says_protection(s)), None)
    meta = {k: v for k, v in (patient.get("meta") or {}).items() if k != "security"}
    if said:
        meta["security"] = said
    patient["meta"] = meta


def _says_protection(snapshot: JSON) -> bool:
    return "security" in (snapshot["patient"].get("meta") or {})


def fold_patient(payloads: list[JSON]) -> JSON | None:
    """The Patient of a stream, or ``None`` when the stream holds nothing that describes one."""
    snapshots = sorted((p for p in payloads if p.get("kind", DEMOGRAPHICS) == DEMOGRAPHICS), key=_order)
    merges = sorted((p for p in payloads if p.get("kind") == MERGED_INTO), key=_order)
    absorbed = sorted({str(p["merged"]) for p in payloads if p.get("kind") == ABSORBED})
    if snapshots:
        patient = {
            k: v for k, v in snapshots[-1]["patient"].items() if k not in ("deceasedDateTime", "deceasedBoolean")
        }
        # NK1 is an optional segment: a message without it says nothing of the patient's contacts
        contacts = next((s["patient"]["contact"] for s in reversed(snapshots) if s["patient"].get("contact")), None)
        if contacts:
            patient["contact"] = contacts
        death = next((s["patient"] for s in reversed(snapshots) if _has_death_info(s["patient"])), None)
        if death is not None:
            patient.update({k: death[k] for k in ("deceasedDateTime", "deceasedBoolean") if k in death})
        _fold_protection(patient, snapshots)
    elif merges:
        last = merges[-1]
        patient = {
            "resourceType": "Patient",
            "id": last["id"],
            "meta": {"profile": [PROFILE_PATIENT]},
            "identifier": last["identifiers"],
        }
    else:
        return None
    links = [{"other": {"reference": f"Patient/{m}"}, "type": "replaces"} for m in absorbed]
    if merges:
        links.insert(0, {"other": {"reference": f"Patient/{merges[-1]['survivor']}"}, "type": "replaced-by"})
        patient["active"] = False
    else:
        patient["active"] = True
    if links:
        patient["link"] = links
    else:
        patient.pop("link", None)
    return patient
