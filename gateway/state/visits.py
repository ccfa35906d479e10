"""Folding a stay's facts into its Encounter: the same set of facts gives the same Encounter in any order.

A stay is the set of movements the hospital sent for one visit number. Rather than patching the stored
Encounter message by message (which makes the result depend on arrival order), the state engine keeps
every fact and recomputes the Encounter from all of them, sorted by event time:

1. inserts are the movements that happened; cancels name the insert they undo (by ZBE-1, else the
   latest insert of the cancelled trigger before the cancel);
2. the remaining inserts, in event order, build the Encounter;
3. a stay whose facts hold no insert at all (a cancel for a movement never seen) produces nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Kind of each insert → the status it leaves the stay in (DOMAIN.md §4, with the French A04 fix).
STATUS_BY_KIND = {"admit": "in-progress", "register": "in-progress", "discharge": "finished"}
#: Tie-break for facts at the same instant: the admission comes before the discharge.
KIND_RANK = {"admit": 0, "register": 0, "discharge": 2, "cancel-admit": 3, "cancel-discharge": 3}


@dataclass(frozen=True, slots=True)
class VisitFact:
    """One message's contribution to a stay (stored as JSON in the ``facts`` table)."""

    trigger: str
    kind: str
    action: str
    cancels: tuple[str, ...]
    event_time: datetime
    control_id: str
    encounter: dict[str, Any]
    movement: dict[str, Any] | None

    @property
    def movement_key(self) -> str | None:
        ident = (self.movement or {}).get("identifier")
        return f"{ident.get('system')}|{ident.get('value')}" if ident else None

    def sort_key(self) -> tuple[datetime, int, str, str]:
        """Event order; never the arrival order, so that the fold does not depend on it."""
        return (self.event_time, KIND_RANK.get(self.kind, 1), self.movement_key or "", self.control_id)

    def to_payload(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "kind": self.kind,
            "action": self.action,
            "cancels": list(self.cancels),
            "event_time": self.event_time.isoformat(),
            "control_id": self.control_id,
            "encounter": self.encounter,
            "movement": self.movement,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> VisitFact:
        return cls(
            trigger=data["trigger"],
            kind=data["kind"],
            action=data["action"],
            cancels=tuple(data.get("cancels", ())),
            event_time=datetime.fromisoformat(data["event_time"]),
            control_id=data.get("control_id", ""),
            encounter=data["encounter"],
            movement=data.get("movement"),
        )


def live_inserts(facts: list[VisitFact]) -> tuple[list[VisitFact], list[VisitFact]]:
    """(all inserts, inserts not undone by a cancel), both in event order."""
    ordered = sorted(facts, key=VisitFact.sort_key)
    inserts = [f for f in ordered if f.action == "INSERT"]
    cancelled: set[int] = set()
    for cancel in (f for f in ordered if f.action == "CANCEL"):
        target = _cancel_target(cancel, inserts, cancelled)
        if target is not None:
            cancelled.add(target)
            key = cancel.movement_key
            if key is not None and inserts[target].movement_key == key:
                # ZBE-1 is the movement's identity: an INSERT re-sent under a new MSH-10 is undone with it.
                cancelled.update(i for i, insert in enumerate(inserts) if insert.movement_key == key)
    return inserts, [f for i, f in enumerate(inserts) if i not in cancelled]


def _cancel_target(cancel: VisitFact, inserts: list[VisitFact], cancelled: set[int]) -> int | None:
    key = cancel.movement_key
    if key is not None:
        for index, insert in enumerate(inserts):
            if index not in cancelled and insert.movement_key == key:
                return index
        if any(i.movement_key for i in inserts):
            return None  # movements are identified and none matches: a cancel for a movement never seen
    candidates = [
        i
        for i, insert in enumerate(inserts)
        if i not in cancelled and insert.trigger in cancel.cancels and insert.event_time <= cancel.event_time
    ]
    return candidates[-1] if candidates else None


def fold_visit(facts: list[VisitFact]) -> dict[str, Any] | None:
    """The stay's Encounter, or ``None`` when nothing but cancels (or nothing) was received."""
    inserts, live = live_inserts(facts)
    if not inserts:
        return None
    encounter: dict[str, Any] = {}
    for fact in inserts:  # identity elements survive cancellation: the stay is still this stay
        _merge_identity(encounter, fact.encounter)
    if not live:
        encounter["status"] = "cancelled"
        return _finish(encounter)
    start: str | None = None
    end: str | None = None
    for fact in live:
        _merge_current(encounter, fact.encounter, fact.movement)
        moment = _movement_time(fact)
        if fact.kind in ("admit", "register"):
            start = start or fact.encounter.get("period", {}).get("start") or moment
            end = None
        elif fact.kind == "discharge":
            start = start or fact.encounter.get("period", {}).get("start")
            end = fact.encounter.get("period", {}).get("end") or moment
    encounter["status"] = STATUS_BY_KIND.get(live[-1].kind, "in-progress")
    if encounter["status"] != "finished":
        end = None
        encounter.get("hospitalization", {}).pop("dischargeDisposition", None)
    else:
        encounter["location"] = [{**loc, "status": "completed"} for loc in encounter.get("location", [])]
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        encounter["period"] = period
    else:
        encounter.pop("period", None)
    return _finish(encounter)


def _movement_time(fact: VisitFact) -> str:
    return str((fact.movement or {}).get("date") or fact.event_time.isoformat(timespec="seconds"))


def _merge_identity(encounter: dict[str, Any], facts: dict[str, Any]) -> None:
    for key in ("resourceType", "id", "meta", "subject"):
        if key in facts:
            encounter[key] = facts[key]
    for ident in facts.get("identifier", []):
        encounter.setdefault("identifier", [])
        if ident not in encounter["identifier"]:
            encounter["identifier"].append(ident)
    if "class" in facts and "class" not in encounter:
        encounter["class"] = facts["class"]


def _merge_current(encounter: dict[str, Any], facts: dict[str, Any], fact_movement: dict[str, Any] | None) -> None:
    """Later movements describe the present: their class, place and people replace the earlier ones."""
    for key in ("class", "location", "participant"):
        if facts.get(key):
            encounter[key] = facts[key]
    unit = (fact_movement or {}).get("medical_unit")
    if unit:
        # ZBE-7, the UF de responsabilité médicale, is the unit in charge of the stay (PAM-FR §6.13).
        encounter["serviceProvider"] = {
            "identifier": {"system": unit["system"], "value": unit["code"]},
            **({"display": unit["name"]} if unit.get("name") else {}),
        }
    disposition = facts.get("hospitalization", {}).get("dischargeDisposition")
    if disposition:
        encounter.setdefault("hospitalization", {})["dischargeDisposition"] = disposition


def _finish(encounter: dict[str, Any]) -> dict[str, Any]:
    if not encounter.get("hospitalization"):
        encounter.pop("hospitalization", None)
    if "class" not in encounter:
        # Encounter.class is required in R4; PV1-2 empty or unknown leaves it unknown, said plainly.
        encounter["class"] = {
            "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
            "code": "UNK",
            "display": "unknown",
        }
    order = [
        "resourceType",
        "id",
        "meta",
        "identifier",
        "status",
        "class",
        "subject",
        "participant",
        "period",
    ]
    return {k: encounter[k] for k in [*order, *sorted(set(encounter) - set(order))] if k in encounter}
