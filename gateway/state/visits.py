"""Folding a stay's facts into its Encounter and its movements: the same facts give the same result in any order.

A stay is the set of movements the hospital sent for one visit number (PV1-19). Rather than patching the
stored Encounter message by message (which makes the result depend on arrival order), the state engine
keeps every fact and recomputes the stay from all of them, sorted by event time:

1. inserts are the movements that happened (an INSERT re-sent under a new MSH-10 is the same movement:
   ZBE-1 is its identity); A08 and A44 are inserts too, but change data without being movements;
2. corrections (Z99, ZBE-4 UPDATE) restate the movement named by their ZBE-1: its date, PV1 facts, units
   and nature. Several corrections of one movement apply in the order the sender *recorded* them
   (EVN-2, else MSH-7), so an old correction that arrives late never wins (DOMAIN.md §7.4);
3. cancels undo the insert they name by ZBE-1, else (no ZBE) the latest insert of a cancelled trigger at
   or before the cancel. A cancel or a correction for a movement never seen changes and creates nothing;
4. the live inserts, in event order, build the Encounter: each movement kind moves the status (table
   ``KINDS``), the latest one describes the present (class, place, people, UF médicale). Event order, not
   arrival order, is also what keeps a historic movement (ZBE-5 = Y) from overwriting the present.

Modelling choice: the stay's Encounter shows the *current* state of the visit; its history is a list of
movement Encounters, one per movement with a ZBE-1, each ``partOf`` the stay (FR Core allows it, with the
ZBE-1 as an ``MN`` identifier), readable with ``GET /fhir/Encounter?part-of=Encounter/<id>``. The real
movements chain: each one lasts until the next one (the last until the stay's end). Pending movements
(A05, A14, A15, A16) are plans: listed as ``planned``, outside the chain. An undone movement stays listed
as ``cancelled``, so that a movement Encounter stored earlier is superseded rather than left stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from gateway.canonical import CANONICAL_BASE
from gateway.mapping import directory
from gateway.mapping.engine import PROFILE_ENCOUNTER
from gateway.mapping.ids import resource_id
from gateway.mapping.tables import CANCEL_KINDS, CORRECTION_KIND, CodeRow

JSON = dict[str, Any]

MOVEMENT_TYPE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/movement-type"
#: ZBE-9 natures outside the PAM-FR table, kept as the hospital sent them.
RAW_NATURE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/movement-nature-as-sent"
#: Stand-in for "not given" in :class:`VisitFact`: then the sender recorded the event when it happened.
UNRECORDED = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class KindRule:
    """What a live insert of one kind does to its stay."""

    rank: int  # tie-break at the same instant: the order things happen within a stay
    status: str | None  # the status it leaves the stay in; None leaves the status as it was
    movement: bool = True  # a movement (listed when it has a ZBE-1); False: a change of data only
    present: bool = True  # its PV1/ZBE describe the stay's present; a pending transfer describes a plan
    chained: bool = True  # a real movement: lasts until the next one. Pending ones are plans, set aside
    starts: bool = False  # opens the stay: its PV1-44 (else ZBE-2, else event time) is period.start


#: Insert kinds (mappings/messages/ADT.yaml) → their effect. DOMAIN.md §4 with the French fix: A04 means
#: the visit has started. A14/A15/A16 (and A05) are plans: they do not move an admitted stay.
KINDS: dict[str, KindRule] = {
    "preadmit": KindRule(0, "planned", chained=False),
    "pending-admit": KindRule(0, "planned", chained=False),
    "admit": KindRule(1, "in-progress", starts=True),
    "register": KindRule(1, "in-progress", starts=True),
    "change-class": KindRule(2, "in-progress"),
    "transfer": KindRule(2, "in-progress"),
    "doctor-change": KindRule(2, "in-progress"),
    "pending-transfer": KindRule(2, None, present=False, chained=False),
    "pending-discharge": KindRule(2, None, present=False, chained=False),
    "update": KindRule(2, None, movement=False),
    "move-account": KindRule(2, None, movement=False),
    "leave": KindRule(3, "onleave"),
    "return": KindRule(4, "in-progress"),
    "discharge": KindRule(5, "finished"),
}
#: What a fact outside ``KINDS`` (a cancel, a correction) would do as an insert: nothing.
_INERT = KindRule(9, None, movement=False, present=False, chained=False)
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: A06/A07 without PV1-2: the class the event itself means (rows I and O of PatientClass_to_EncounterClass).
CLASS_BY_TRIGGER: dict[str, JSON] = {
    "A06": {"system": _ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
    "A07": {"system": _ACT_CODE, "code": "AMB", "display": "ambulatory"},
}
#: Encounter status → the status of the locations it lists (R4 EncounterLocationStatus). On leave, the
#: bed is kept for the patient: "reserved". A cancelled movement never used its place: no status.
LOCATION_STATUS: dict[str, str | None] = {
    "planned": "planned",
    "onleave": "reserved",
    "finished": "completed",
    "cancelled": None,
}
#: ZBE fields a correction restates (with the date, when it gives one, and the PV1 facts).
CORRECTED_ZBE = ("medical_unit", "care_unit", "nature")
_UNKNOWN_CLASS = {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"}
_ORDER = [
    "resourceType",
    "id",
    "meta",
    "identifier",
    "status",
    "class",
    "type",
    "subject",
    "participant",
    "partOf",
    "period",
]
_ORDERED = frozenset(_ORDER)


@dataclass(frozen=True, slots=True)
class VisitFact:
    """One message's contribution to a stay (stored as JSON in the ``facts`` table).

    ``event_time`` is when the event happened (ZBE-2, else EVN-6, …): the fold sorts on it.
    ``recorded_at`` is when the sender recorded it (EVN-2, else MSH-7): it orders corrections of one
    movement. Left out, it is the event time.
    """

    trigger: str
    kind: str
    action: str
    cancels: tuple[str, ...]
    event_time: datetime
    control_id: str
    encounter: JSON
    movement: JSON | None
    recorded_at: datetime = UNRECORDED
    #: :meth:`content_key`, computed once: a fold sorts on it many times (``replace`` computes it anew)
    _content: str | None = field(default=None, init=False, repr=False, compare=False)
    #: ZBE-1 as ``system|value`` (the movement's identity), or None; set at init (``replace`` too): a fold
    #: asks for it about ten times a fact, in its sorts, deduplication and cancels
    movement_key: str | None = field(init=False, repr=False, compare=False)
    #: what a live insert of this kind does (:data:`KINDS`); set at init, read some twenty times a fold
    rule: KindRule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.recorded_at == UNRECORDED:
            object.__setattr__(self, "recorded_at", self.event_time)
        ident = (self.movement or {}).get("identifier")
        object.__setattr__(self, "movement_key", f"{ident.get('system')}|{ident.get('value')}" if ident else None)
        object.__setattr__(self, "rule", KINDS.get(self.kind, _INERT))

    @property
    def role(self) -> str | None:
        """``insert``, ``correct``, ``cancel``, or ``None`` for a fact the visit fold does not use."""
        if self.action == "CANCEL" or self.kind in CANCEL_KINDS:
            return "cancel"
        if self.kind == CORRECTION_KIND or self.action == "UPDATE":
            return "correct"
        return "insert" if self.kind in KINDS else None

    def content_key(self) -> str:
        """The whole fact as text: the last tie-break, so that no two different facts ever compare equal.

        Kept once computed: the fact is frozen, and a fold asks for it in every sort and deduplication.
        """
        key = self._content
        if key is None:
            key = json.dumps(self.to_payload(), sort_keys=True, default=str)
            object.__setattr__(self, "_content", key)
        return key

    def sort_key(self) -> tuple[datetime, int, str, str, ContentOrder]:
        """Event order; never the arrival order, so that the fold does not depend on it."""
        return (self.event_time, self.rule.rank, self.movement_key or "", self.control_id, ContentOrder(self))

    def record_key(self) -> tuple[datetime, str, ContentOrder]:
        """The order the sender recorded things in: among versions of one movement, the last one wins."""
        return (self.recorded_at, self.control_id, ContentOrder(self))

    def outline(self) -> tuple[str, str, str, str, str, str]:
        """Fields of the payload that tell most facts apart without the whole text: two facts that differ
        here have different :meth:`content_key` (each is in the payload as it is)."""
        return (
            self.trigger,
            self.kind,
            self.action,
            self.control_id,
            self.event_time.isoformat(),
            self.recorded_at.isoformat(),
        )

    def to_payload(self) -> JSON:
        return {
            "trigger": self.trigger,
            "kind": self.kind,
            "action": self.action,
            "cancels": list(self.cancels),
            "event_time": self.event_time.isoformat(),
            "recorded_at": self.recorded_at.isoformat(),
            "control_id": self.control_id,
            "encounter": self.encounter,
            "movement": self.movement,
        }

    @classmethod
    def from_payload(cls, data: JSON) -> VisitFact:
        event_time = datetime.fromisoformat(data["event_time"])
        recorded = data.get("recorded_at")
        return cls(
            trigger=data["trigger"],
            kind=data["kind"],
            action=data["action"],
            cancels=tuple(data.get("cancels", ())),
            event_time=event_time,
            control_id=data.get("control_id", ""),
            encounter=data["encounter"],
            movement=data.get("movement"),
            recorded_at=datetime.fromisoformat(recorded) if recorded else event_time,
        )


class ContentOrder:
    """A fact's :meth:`VisitFact.content_key` as the last element of a sort key, computed only when the
    elements before it tie: a tuple compares element by element, and facts rarely tie on time, rank,
    movement and control id, so most folds never serialize a fact (a stay is refolded, all its facts
    sorted, on every message about it)."""

    __slots__ = ("fact",)

    def __init__(self, fact: VisitFact) -> None:
        self.fact = fact

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContentOrder) and self.fact.content_key() == other.fact.content_key()

    def __lt__(self, other: ContentOrder) -> bool:
        return self.fact.content_key() < other.fact.content_key()

    def __gt__(self, other: ContentOrder) -> bool:
        return self.fact.content_key() > other.fact.content_key()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Stay:
    """A folded stay: its Encounter (``None`` when nothing but cancels, corrections or updates came) and
    its movement Encounters, ordered by date."""

    encounter: JSON | None
    movements: list[JSON] = field(default_factory=list)
    #: the inserts the fold resolved, in event order, each with whether it is still live (the NdE declarations
    #: read them: resolving them again cost as much as the fold)
    inserts: list[tuple[VisitFact, bool]] = field(default_factory=list, compare=False, repr=False)


# -- which inserts are live --------------------------------------------------------------------


def _resolve(facts: Iterable[VisitFact]) -> list[tuple[VisitFact, bool]]:
    """Every insert (one per movement), corrected, in event order, with whether it is still live."""
    by_role: dict[str | None, list[VisitFact]] = {"insert": [], "correct": [], "cancel": []}
    for fact in sorted(_distinct(facts), key=VisitFact.sort_key):
        by_role.setdefault(fact.role, []).append(fact)
    inserts = sorted(_corrected(_one_per_movement(by_role["insert"]), by_role["correct"]), key=VisitFact.sort_key)
    cancelled: set[int] = set()
    for cancel in by_role["cancel"]:
        target = _cancel_target(cancel, inserts, cancelled)
        if target is not None:
            cancelled.add(target)
    return [(f, i not in cancelled) for i, f in enumerate(inserts)]


def _distinct(facts: Iterable[VisitFact]) -> list[VisitFact]:
    """The same fact stored twice is one fact. Whole texts are compared only among facts of the same
    :meth:`VisitFact.outline` (a message received twice under one MSH-10), not for every fact of the stay."""
    by_outline: dict[tuple[str, ...], list[VisitFact]] = {}
    for fact in facts:
        by_outline.setdefault(fact.outline(), []).append(fact)
    out: list[VisitFact] = []
    for same in by_outline.values():
        out.extend(same if len(same) == 1 else {f.content_key(): f for f in same}.values())
    return out


def event_moment(fact: VisitFact, edge: str) -> str:
    """When a movement happened: PV1-44/45 (``edge`` start or end) when given, else ZBE-2, else event time."""
    return _pv1_period(fact, edge) or _movement_time(fact)


def _one_per_movement(inserts: list[VisitFact]) -> list[VisitFact]:
    """ZBE-1 is the movement's identity: an INSERT received again is the same movement (its latest
    recorded version stands). Inserts without ZBE-1 cannot be told apart and all count, and so do A08/A44,
    which are no movements even when a sender gives them a ZBE-1."""
    keyed: dict[str, VisitFact] = {}
    out = []
    for fact in inserts:
        key = fact.movement_key if fact.rule.movement else None
        if key is None:
            out.append(fact)
        elif key not in keyed or fact.record_key() > keyed[key].record_key():
            keyed[key] = fact
    return [*out, *keyed.values()]


def _corrected(inserts: list[VisitFact], corrections: list[VisitFact]) -> list[VisitFact]:
    """Apply each movement's corrections in the order the sender recorded them (DOMAIN.md §7.4)."""
    out = []
    for insert in inserts:
        key = insert.movement_key
        mine = [c for c in corrections if key is not None and c.movement_key == key]
        current = insert
        for correction in sorted(mine, key=VisitFact.record_key):
            current = _restate(current, correction)
        out.append(current)
    return out


def _restate(insert: VisitFact, correction: VisitFact) -> VisitFact:
    """A Z99 restates the whole movement: its PV1 facts, units and nature replace the insert's; its date
    too when it gives one. The movement keeps its trigger, kind and identity."""
    old, new = insert.movement or {}, correction.movement or {}
    movement = {k: v for k, v in old.items() if k not in CORRECTED_ZBE}
    movement.update({k: new[k] for k in CORRECTED_ZBE if k in new})
    moved = bool(new.get("date"))
    if moved:
        movement["date"] = new["date"]
    return replace(
        insert,
        encounter=correction.encounter,
        movement=movement,
        event_time=correction.event_time if moved else insert.event_time,
    )


def _cancel_target(cancel: VisitFact, inserts: list[VisitFact], cancelled: set[int]) -> int | None:
    key = cancel.movement_key
    if key is not None:
        for index, insert in enumerate(inserts):
            if insert.movement_key == key:
                return index
        if any(i.movement_key for i in inserts):
            return None  # movements are identified and none matches: a cancel for a movement never seen
    candidates = [
        i
        for i, insert in enumerate(inserts)
        if i not in cancelled and insert.trigger in cancel.cancels and insert.event_time <= cancel.event_time
    ]
    return candidates[-1] if candidates else None


# -- the stay ----------------------------------------------------------------------------------


def fold_visit(facts: Iterable[VisitFact]) -> JSON | None:
    """The stay's Encounter, or ``None`` when no movement was ever inserted."""
    return fold_stay(facts).encounter


def fold_stay(facts: Iterable[VisitFact], *, natures: Mapping[str, CodeRow] | None = None, copy: bool = True) -> Stay:
    """The stay's Encounter and its movement Encounters.

    ``natures`` is the ZBE-9 table (``MovementNature``) used to code a movement's nature when the engine
    passed it as a bare code; a nature the engine already coded is used as it is, an unknown one omitted.

    ``copy=False`` leaves out the final copy: the result then shares parts with the facts (and the
    movements with the stay, e.g. their subject). For a caller that changes no part of the result or of
    the facts in place (the refold: it writes new top-level dicts, as
    :func:`gateway.state.patients.fold_patient`'s callers do): the copy was a fifth of the fold.
    """
    resolved = _resolve(facts)
    inserts = [f for f, _ in resolved]
    if not any(f.rule.movement for f in inserts):
        return Stay(None, inserts=resolved)  # cancels, corrections or updates for a stay never seen create nothing
    live = [f for f, is_live in resolved if is_live]
    encounter = _identity(inserts)
    status = _status([f for f in live if f.rule.movement])
    encounter["status"] = status
    if status != "cancelled":
        _present(encounter, [f for f in live if f.rule.present])
    # FR Core requires a period: a cancelled stay keeps the one its movements had before they were undone.
    period = _period(live, status) if status != "cancelled" else _cancelled_period(inserts)
    if period:
        encounter["period"] = period
    stay = _finish(encounter)
    movements = _movements(stay, resolved, natures or {})
    if not copy:
        return Stay(stay, movements, inserts=resolved)
    # Copies: the result shares nothing with the stored facts, so a caller may change it freely.
    return Stay(_copied(stay), _copied(movements), inserts=resolved)


def _copied(value: Any) -> Any:
    """``value`` with every dict and list copied and the leaves shared: what ``copy.deepcopy`` gives for the
    JSON trees a fold returns (leaves are str, numbers, None or other immutable values such as datetimes),
    at a fraction of its cost. Unlike deepcopy, two places that shared one dict get a copy each."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _identity(inserts: list[VisitFact]) -> JSON:
    """What stays true of the stay even when every movement is cancelled: it is still this stay."""
    encounter: JSON = {}
    for fact in inserts:
        for key in ("resourceType", "id", "meta", "subject"):
            if key in fact.encounter:
                encounter[key] = fact.encounter[key]
        for ident in fact.encounter.get("identifier", []):
            if ident not in encounter.setdefault("identifier", []):
                encounter["identifier"].append(ident)
        if "class" not in encounter and (cls := _class_of(fact)):
            encounter["class"] = cls
    moves = [f for f in inserts if f.kind == "move-account" and f.encounter.get("subject")]
    if moves:
        encounter["subject"] = moves[-1].encounter["subject"]  # A44: the visit now belongs to that patient
    return encounter


def _class_of(fact: VisitFact) -> JSON | None:
    """PV1-2 when given; else, for A06/A07, the class the event itself means."""
    cls = fact.encounter.get("class") or (CLASS_BY_TRIGGER.get(fact.trigger) if fact.kind == "change-class" else None)
    return dict(cls) if cls else None


def _status(live_movements: list[VisitFact]) -> str:
    """The status the live movements leave the stay in, taken in event order."""
    if not live_movements:
        return "cancelled"
    status: str | None = None
    for fact in live_movements:
        wanted = fact.rule.status
        if wanted == "planned" and status not in (None, "planned"):
            continue  # a plan recorded once the stay began does not un-begin it
        status = wanted or status
    # Only pending transfers or discharges: one cannot plan moving a patient who is not in.
    return status or "in-progress"


#: What a discharge says (PV1-36 disposition, PV1-37 destination): kept while the stay is finished.
DISCHARGE_KEYS = ("dischargeDisposition", "destination")


def _present(encounter: JSON, live: list[VisitFact]) -> None:
    """Later facts describe the present: their class, place, people and unit replace the earlier ones."""
    for fact in live:
        cls = _class_of(fact)
        if cls:
            encounter["class"] = cls
        for key in ("location", "participant"):
            if fact.encounter.get(key):
                encounter[key] = fact.encounter[key]
        provider = _service_provider(fact.movement)
        if provider:
            encounter["serviceProvider"] = provider
        for key in DISCHARGE_KEYS:
            value = fact.encounter.get("hospitalization", {}).get(key)
            if value:
                encounter.setdefault("hospitalization", {})[key] = value
    if encounter["status"] != "finished":
        for key in DISCHARGE_KEYS:
            encounter.get("hospitalization", {}).pop(key, None)
    if "location" in encounter:
        encounter["location"] = _locations(encounter["location"], encounter["status"])


def _period(live: list[VisitFact], status: str) -> JSON:
    """Start at the first admission (PV1-44, else ZBE-2, else event time); end at the discharge that
    finished the stay (PV1-45, else ZBE-2, else event time). A planned stay starts when it is planned to.
    FR Core requires a period: a stay seen only from later movements starts at the first of them."""
    if status == "planned":
        return _planned_period(live)
    begun = [f for f in live if f.rule.status != "planned" and f.rule.movement]
    opening = next((f for f in live if f.rule.starts), None)
    start = (_pv1_period(opening, "start") or _movement_time(opening)) if opening else None
    if start is None:  # no admission received: any begun fact's PV1-44 still says when the stay began
        start = next((s for f in live if f.rule.status != "planned" and (s := _pv1_period(f, "start"))), None)
    if start is None and begun:
        start = _movement_time(begun[0])
    end = None
    if status == "finished":
        closing = [f for f in live if f.kind == "discharge"][-1]
        end = _pv1_period(closing, "end") or _movement_time(closing)
    return {k: v for k, v in (("start", start), ("end", end)) if v}


def _planned_period(live: list[VisitFact]) -> JSON:
    """A planned stay (A05, A14) starts when it is planned to: PV1-44, else the plan's own date (ZBE-2,
    else EVN-6: PAM-FR dates a pre-admission at the planned admission)."""
    plan = next((f for f in live if f.rule.status == "planned"), None)
    if plan is None:
        return {}
    return {"start": _pv1_period(plan, "start") or _movement_time(plan)}


def _cancelled_period(inserts: list[VisitFact]) -> JSON:
    """A cancelled stay keeps the period its movements gave it before they were undone (no end)."""
    period = _period(inserts, "in-progress")
    return period or _planned_period(inserts)


def _pv1_period(fact: VisitFact | None, edge: str) -> str | None:
    value = (fact.encounter.get("period") or {}).get(edge) if fact else None
    return str(value) if value else None


def _movement_time(fact: VisitFact) -> str:
    return str((fact.movement or {}).get("date") or fact.event_time.isoformat(timespec="seconds"))


def _service_provider(movement: JSON | None) -> JSON | None:
    """ZBE-7, the UF de responsabilité médicale, is the unit in charge (PAM-FR §6.13)."""
    return directory.unit_reference((movement or {}).get("medical_unit"))


def _locations(locations: list[JSON], status: str) -> list[JSON]:
    wanted = LOCATION_STATUS.get(status, "active")
    out = []
    for loc in locations:
        rest = {k: v for k, v in loc.items() if k != "status"}
        out.append({**rest, "status": wanted} if wanted else rest)
    return out


def _finish(encounter: JSON) -> JSON:
    if not encounter.get("hospitalization"):
        encounter.pop("hospitalization", None)
    if "class" not in encounter:
        # Encounter.class is required in R4; PV1-2 empty or unknown leaves it unknown, said plainly.
        encounter["class"] = dict(_UNKNOWN_CLASS)
    out = {k: encounter[k] for k in _ORDER if k in encounter}
    if len(out) < len(encounter):
        out.update((k, encounter[k]) for k in sorted(encounter.keys() - _ORDERED))
    return out


# -- the movements -----------------------------------------------------------------------------


def _movements(stay: JSON, resolved: list[tuple[VisitFact, bool]], natures: Mapping[str, CodeRow]) -> list[JSON]:
    """One Encounter ``partOf`` the stay per movement with a ZBE-1, in date order.

    Real movements chain: each lasts until the next (with or without ZBE-1), the last until the stay's
    end; all are finished but the last, which has the stay's status. Plans are ``planned``; undone
    movements ``cancelled``.
    """
    chain = [f for f, live in resolved if live and f.rule.movement and f.rule.chained]
    ends = {id(f): _movement_time(nxt) for f, nxt in pairwise(chain)}
    if chain and stay["status"] == "finished":
        ends[id(chain[-1])] = stay.get("period", {}).get("end")
    classes = _classes(resolved, default=stay["class"])
    out = []
    for fact, live in resolved:
        if not fact.rule.movement or fact.movement_key is None:
            continue
        end = ends.get(id(fact))
        if not live or stay["status"] == "cancelled":
            status = "cancelled"
        elif not fact.rule.chained:
            overtaken = next((m for m in chain if _movement_time(m) >= _movement_time(fact)), None)
            # a plan the stay has moved past is no longer a plan: it ended when the stay went on
            status, end = ("finished", _movement_time(overtaken)) if overtaken else ("planned", None)
        else:
            status = stay["status"] if fact is chain[-1] else "finished"
        out.append(_movement(stay, fact, status=status, end=end, natures=natures, klass=classes[id(fact)]))
    return out


def _classes(resolved: list[tuple[VisitFact, bool]], *, default: JSON) -> dict[int, JSON]:
    """The class each movement had when it happened (PV1-2 then, else the class in force before it)."""
    current = default
    out: dict[int, JSON] = {}
    for fact, _live in sorted(resolved, key=lambda r: r[0].sort_key()):
        current = _class_of(fact) or current
        out[id(fact)] = current
    return out


def _movement(
    stay: JSON, fact: VisitFact, *, status: str, end: str | None, natures: Mapping[str, CodeRow], klass: JSON
) -> JSON:
    movement = fact.movement or {}
    ident = movement["identifier"]
    codings = [{"system": MOVEMENT_TYPE_SYSTEM, "code": fact.trigger, "display": fact.kind}]
    nature = _nature(movement.get("nature"), natures)
    if nature:
        codings.append(nature)
    # built in the order _finish gives (_ORDER, then the other keys sorted), with its class always set:
    # _finish would only copy it again
    out: JSON = {
        "resourceType": "Encounter",
        "id": movement_id(str(stay["id"]), ident),
        "meta": {"profile": [PROFILE_ENCOUNTER]},
        "identifier": [ident],
        "status": status,
        "class": klass,
        "type": [{"coding": codings}],
    }
    if "subject" in stay:
        out["subject"] = stay["subject"]
    out["partOf"] = {"reference": f"Encounter/{stay['id']}"}
    out["period"] = {k: v for k, v in (("start", _movement_time(fact)), ("end", end)) if v}
    if fact.encounter.get("location"):
        out["location"] = _locations(fact.encounter["location"], status)
    provider = _service_provider(movement)
    if provider:
        out["serviceProvider"] = provider
    return out


def movement_id(stay_id: str, identifier: JSON) -> str:
    """The id of the movement Encounter a ZBE-1 ``identifier`` names in a stay: its identity, deterministic."""
    return resource_id("Encounter", f"movement|{stay_id}|{identifier.get('system')}|{identifier.get('value')}")


def _nature(value: Any, natures: Mapping[str, CodeRow]) -> JSON | None:
    """ZBE-9 as a coding: already coded by the engine, or looked up. A value outside the PAM-FR table
    (hospitals extend it, e.g. with suffixed codes) is kept raw, as sent, under the sender-nature system:
    the engine warns about it, and a platform still sees what the hospital meant."""
    if isinstance(value, dict):
        return dict(value) if value.get("code") else None
    if not value:
        return None
    row = natures.get(str(value))
    return row.coding() if row else {"system": RAW_NATURE_SYSTEM, "code": str(value)}
