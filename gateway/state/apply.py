"""Applying one mapped message to the store, inside the caller's transaction.

Order of work: lock the streams → record the facts → refold patient and stay → write the versions
that changed → queue a notification for each topic that fired and each subscription whose filters
match. Everything commits with the raw message, or nothing does.

Merges (A40, and A47 when MRG-1 names another IPP) link the merged patient to the survivor; every stay
of the merged patient is refolded so that its subject becomes the survivor, and subscriptions that
named the merged patient keep hearing about him through the survivor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.db.indexing import search_entries
from gateway.db.repo import FactRepo, NewFact, PatientLinkRepo, ResourceRepo, StoredResource, SubscriptionRecord
from gateway.db.unit import UnitOfWork
from gateway.errors import MappingError
from gateway.mapping.engine import Mapped
from gateway.mapping.ids import ps_identifier_forms
from gateway.mapping.tables import CodeRow, Tables
from gateway.state.careteam import Participation, careteam_id, fold_careteam
from gateway.state.patients import (
    ABSORBED,
    DEMOGRAPHICS,
    MERGED_INTO,
    fold_patient,
    merge_payloads,
    patient_payload,
)
from gateway.state.visits import VisitFact, fold_stay, movement_id
from gateway.subscriptions.matching import Target, matches, patient_reference
from gateway.subscriptions.nde import contained_subject
from gateway.subscriptions.nde_declaration import declaration_id, declarations
from gateway.subscriptions.topics import Change, Topic, fired, members_changed

JSON = dict[str, Any]
MAX_REFOLD = 2000
#: How many of a patient's latest stays feed his care circle (see _stays_of).
CIRCLE_STAYS = 20
PARTICIPATION, PLATFORM = "participation", "platform"
PATIENT_KINDS = (DEMOGRAPHICS, MERGED_INTO, ABSORBED)
#: id of a CareTeamRole table → (the table, its roles as CodeableConcepts): see :attr:`Unit.roles`
_ROLES: dict[int, tuple[dict[str, CodeRow], dict[str, JSON]]] = {}


@dataclass(slots=True)
class Applied:
    """What one message changed: the new versions and the notifications queued."""

    changed: list[StoredResource] = field(default_factory=list)
    notifications: int = 0
    topics: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Unit:
    """The store and the facts of one transaction, with what it has changed so far."""

    storage: UnitOfWork
    now: datetime
    message_id: int
    facts: FactRepo
    store: ResourceRepo
    links: PatientLinkRepo
    result: Applied
    tables: Tables
    #: changes waiting to be matched against subscriptions, once every refold of the unit is done
    pending: list[tuple[Change, StoredResource]] = field(default_factory=list)
    _survivors: dict[str, str] = field(default_factory=dict)
    #: PD1-12 = Y patients: notify platforms' subscriptions about them too (operator setting, #13)
    confidential_to_platforms: bool = False
    #: topic URL → :meth:`listening`'s answer, asked once per unit: every change of a message asks about
    #: each topic of its type (and the unit of work reads the subscriptions once per transaction anyway)
    _heard: dict[str, list[SubscriptionRecord]] = field(default_factory=dict)

    @classmethod
    def of(cls, storage: UnitOfWork, *, now: datetime, message_id: int, tables: Tables) -> Unit:
        return cls(storage, now, message_id, storage.facts, storage.resources, storage.links, Applied(), tables)

    def survivor(self, patient_id: str) -> str:
        """The patient a (possibly merged) patient now is, read once per message."""
        if patient_id not in self._survivors:
            self._survivors[patient_id] = self.links.survivor(patient_id)
        return self._survivors[patient_id]

    def listening(self, topic_url: str) -> list[SubscriptionRecord]:
        """Subscriptions recording ``topic_url`` and valid now (the unit of work reads them once), the
        same list for the whole unit: read only."""
        found = self._heard.get(topic_url)
        if found is None:
            found = self._heard[topic_url] = self.storage.listening(topic_url, now=self.now)
        return found

    def heard(self, topic: Topic) -> bool:
        """Whether any subscription valid now records ``topic``: :func:`fired` asks before comparing versions."""
        return bool(self.listening(topic.url))

    def notify_all(self) -> None:
        """Match the unit's changes only now, so that filters see the state after the whole message (a
        care circle filter must hear of the admission that adds the doctor); then write the versions the
        unit's refolds made, in one statement (every caller ends its unit here)."""
        pending, self.pending = self.pending, []
        for change, stored in pending:
            _notify(self, change, stored)
        self.storage.flush()

    @property
    def roles(self) -> dict[str, JSON]:
        """Care circle role code → CodeableConcept (mappings/codes/CareTeamRole.csv), made once per table:
        every circle refold asks (shared read only, as the stored contents are)."""
        table = self.tables.codes["CareTeamRole"]
        known = _ROLES.get(id(table))
        if known is None or known[0] is not table:
            _ROLES.clear()  # the tables of one engine at a time: a new one replaces the last
            known = _ROLES[id(table)] = (table, {code: {"coding": [row.coding()]} for code, row in table.items()})
        return known[1]


def visit_fact(mapped: Mapped, encounter: JSON) -> VisitFact:
    return VisitFact(
        trigger=mapped.event.trigger,
        kind=mapped.event.kind,
        action=mapped.action,
        cancels=mapped.event.cancels,
        event_time=mapped.event_time,
        control_id=mapped.header.control_id,
        encounter=encounter,
        movement=mapped.movement,
        recorded_at=mapped.recorded_at or mapped.event_time,
    )


def apply_message(
    storage: UnitOfWork,
    mapped: Mapped,
    *,
    message_id: int,
    now: datetime,
    tables: Tables,
    confidential_to_platforms: bool = False,
) -> Applied:
    unit = Unit.of(storage, now=now, message_id=message_id, tables=tables)
    unit.confidential_to_platforms = confidential_to_platforms
    patient_id = str(mapped.patient["id"])
    prior_id = (mapped.prior or {}).get("patient_id")
    merging = mapped.event.kind == "merge" or (
        mapped.event.kind == "change-identifier" and prior_id is not None and prior_id != patient_id
    )
    if mapped.event.kind == "merge" and (prior_id is None or prior_id == patient_id):
        raise MappingError("MRG-1 must name the merged patient's IPP, other than the survivor's", location="MRG-1")
    survivor_id = unit.survivor(patient_id)
    streams = [f"Patient/{patient_id}", f"CareTeam/{careteam_id(patient_id)}", f"CareTeam/{careteam_id(survivor_id)}"]
    if (merging or mapped.account is not None) and prior_id:
        streams += [f"Patient/{prior_id}", f"CareTeam/{careteam_id(prior_id)}"]
    if mapped.encounter is not None:
        streams.append(f"Encounter/{mapped.encounter['id']}")
    unit.facts.lock(streams)
    # what the refolds below read, in two queries: the streams' facts, and the resources they write
    unit.facts.preload(streams)
    written = [(str(r["resourceType"]), str(r["id"])) for r in [*mapped.practitioners, *mapped.directory]]
    if mapped.encounter is not None:
        written += _stay_writes(unit, str(mapped.encounter["id"]), new=mapped.movement)
    unit.store.preload([(s.split("/", 1)[0], s.split("/", 1)[1]) for s in streams] + written)
    # a patient first heard of now (not stored before this message) has no stay but those it writes
    first_heard = unit.store.get("Patient", patient_id) is None and not merging and survivor_id == patient_id
    moved = _account_stays(unit, mapped.account) if mapped.account is not None else []

    _record_facts(unit, mapped)
    if merging and prior_id:
        _merge(unit, mapped, merged_id=prior_id, survivor_id=patient_id)
    _refold_patient(unit, patient_id, action=mapped.action)
    for practitioner in [*mapped.practitioners, *mapped.directory]:
        _put(unit, practitioner)
    if moved:
        _move_account(unit, mapped, stays=moved)
    if mapped.encounter is not None:
        _refold_stay(unit, str(mapped.encounter["id"]), action=mapped.action)
    if (merging or mapped.account is not None) and prior_id and prior_id != patient_id:
        refold_careteam(unit, prior_id, action=mapped.action)  # merged away, or lost the stays moved
    refold_careteam(unit, patient_id, action=mapped.action, first_heard=first_heard and not moved)
    if survivor_id != patient_id:
        # a message naming a merged patient feeds the survivor's circle (his stays now belong there)
        refold_careteam(unit, survivor_id, action=mapped.action)
    unit.notify_all()
    return unit.result


def record_received(unit: Unit, resource: JSON) -> StoredResource | None:
    """Write a resource received through the API (an ANS NdE event declaration, flux 3) and notify the
    subscriptions its topics select, in the caller's transaction, like a resource an ADT message made."""
    stored = _put(unit, resource, action="INSERT")
    unit.notify_all()
    return stored


def _stay_writes(unit: Unit, stay_id: str, *, new: JSON | None) -> list[tuple[str, str]]:
    """What the stay's refold will write besides the stay, foreseen from its facts (already read) and the
    message's movement: a movement Encounter per ZBE-1, a declaration per NdE event type. They join the
    message's one preload; one foreseen wrongly costs a read of its own at its write, nothing else."""
    idents = [(p.get("movement") or {}).get("identifier") for p in unit.facts.of(f"Encounter/{stay_id}")]
    idents.append((new or {}).get("identifier"))
    keys = [("Encounter", movement_id(stay_id, ident)) for ident in idents if ident]
    codes = sorted({row.target_code for row in unit.tables.codes["ADT_to_TRE_R254"].values()})
    return keys + [("CommunicationRequest", declaration_id(stay_id, code)) for code in codes]


def _record_facts(unit: Unit, mapped: Mapped) -> None:
    """The message's demographics and care-circle statements on the patient's stream, and its visit fact on
    the stay's, in one write (each stream is folded on its own, so writing the visit fact before the
    patient's refold changes nothing)."""
    stream = f"Patient/{mapped.patient['id']}"
    demographics = patient_payload(
        patient=mapped.patient, event_time=mapped.event_time, control_id=mapped.header.control_id
    )
    new = [NewFact(stream, "demographics", demographics)]
    source = f"hospital:{mapped.header.sending_facility or mapped.header.sending_application}"
    for statement in mapped.participations:
        fact = Participation(
            member=statement["member"],
            role=statement["role"],
            action=statement["action"],
            event_time=mapped.event_time,
            control_id=mapped.header.control_id,
            source=source,
            start=statement.get("start"),
            end=statement.get("end"),
            stay=statement.get("stay"),
        )
        new.append(NewFact(stream, PARTICIPATION, fact.to_payload()))
    if mapped.encounter is not None:
        visit = visit_fact(mapped, mapped.encounter).to_payload()
        new.append(NewFact(f"Encounter/{mapped.encounter['id']}", mapped.event.kind, visit))
    unit.facts.add_many(new, message_id=unit.message_id, event_time=mapped.event_time)


def refold_careteam(unit: Unit, patient_id: str, *, action: str = "INSERT", first_heard: bool = False) -> None:
    """The circle of ``patient_id``: its own facts and stays, those of patients merged into it, and what
    platforms added. A patient merged into another keeps an inactive, empty circle pointing there.

    ``first_heard``: the patient was not stored before this unit (and is in no merge), so his stays are
    those the unit wrote: found in the identity map, without the search (see :func:`_stays_of`)."""
    survivor = unit.survivor(patient_id)
    patient = unit.store.get("Patient", patient_id)
    if patient is None:
        return
    merged_into = survivor if survivor != patient_id else None
    participations: list[Participation] = []
    stays: list[tuple[JSON, list[JSON]]] = []
    if merged_into is None:
        for pid in [patient_id, *unit.links.merged_into(patient_id)]:
            participations += [
                Participation.from_payload(p) for p in unit.facts.of(f"Patient/{pid}", kinds=(PARTICIPATION,))
            ]
        stays = _stays_of(unit, patient_id, searched=not first_heard)
    team_id = careteam_id(patient_id)
    # Platform edits are serialized by the CareTeam stream lock: the last one written is the current list.
    platform = unit.facts.of(f"CareTeam/{team_id}", kinds=(PLATFORM,))
    latest_platform = platform[-1]["participants"] if platform else []
    team = fold_careteam(
        patient=patient.content,
        participations=participations,
        stays=stays,
        platform_participants=[] if merged_into else latest_platform,
        roles=unit.roles,
        merged_into=merged_into,
        since=lambda: _first_heard(unit, patient_id),
    )
    _put(unit, team, action=action)


def _account_stays(unit: Unit, account: JSON) -> list[str]:
    """A44 without PV1: the stays holding the account (their AN identifier), locked; none is an error
    (AE: a stay not received yet cannot be moved), found before anything is written."""
    found, _ = unit.store.search(
        "Encounter", [("identifier", str(account["system"]), str(account["value"]))], limit=MAX_REFOLD, count=False
    )
    stays = sorted(r.id for r in found if "partOf" not in r.content)
    if not stays:
        raise MappingError(
            "A44: no stay holds the account MRG-3 (else PID-18) names: nothing to move",
            location="MRG-3",
        )
    unit.facts.lock([f"Encounter/{stay_id}" for stay_id in stays])
    return stays


def _move_account(unit: Unit, mapped: Mapped, *, stays: list[str]) -> None:
    """Each stay of the account gets the move as a fact of its own, as an A44 naming the visit gives it."""
    subject = {"reference": f"Patient/{mapped.patient['id']}"}
    for stay_id in stays:
        encounter = {"resourceType": "Encounter", "id": stay_id, "subject": subject}
        unit.facts.add(
            stream=f"Encounter/{stay_id}",
            message_id=unit.message_id,
            event_time=mapped.event_time,
            kind=mapped.event.kind,
            payload=visit_fact(mapped, encounter).to_payload(),
        )
        _refold_stay(unit, stay_id, action=mapped.action)


def _first_heard(unit: Unit, patient_id: str) -> str | None:
    """When the gateway first heard of a patient (his earliest fact): a memberless circle's start."""
    times = [str(p["event_time"]) for p in unit.facts.of(f"Patient/{patient_id}", kinds=PATIENT_KINDS)]
    return min(datetime.fromisoformat(t) for t in times).isoformat(timespec="seconds") if times else None


def _stays_of(unit: Unit, patient_id: str, *, searched: bool = True) -> list[tuple[JSON, list[JSON]]]:
    """The patient's most recent stays with their movements, in one query (movements share the subject).

    Only the ``CIRCLE_STAYS`` latest stays feed the circle: a patient in séances (dialysis, chemotherapy)
    has hundreds of stays, and the circle is about who cares for him now and lately, not a full archive
    (the stays themselves stay readable). The cut depends on the stays' dates, never on the clock.

    ``searched=False`` (a patient the unit writes for the first time): no query. Stays and movements are
    written with the patient of their message as subject, after that patient's refold has stored him (or
    his survivor), so a patient not stored before this unit has no Encounter but those the unit wrote: the
    identity map's Encounters whose subject (what the ``patient`` search reads) is him.
    """
    subject = f"Patient/{patient_id}"

    def about(r: StoredResource) -> bool:
        return (r.content.get("subject") or {}).get("reference") == subject  # what ``patient`` reads

    if searched:
        # the stays and movements the unit has just written are not flushed for it: matched here by ``about``
        found, _ = unit.store.search(
            "Encounter", [("patient", None, subject)], limit=MAX_REFOLD, count=False, held_back=about
        )
    else:
        found = [r for r in unit.store.held("Encounter") if about(r)]
    movements: dict[str, list[JSON]] = {}
    stays = []
    for resource in (r.content for r in found):
        parent = resource.get("partOf", {}).get("reference")
        if parent:
            movements.setdefault(str(parent).removeprefix("Encounter/"), []).append(resource)
        else:
            stays.append(resource)
    stays.sort(key=lambda s: (str(s.get("period", {}).get("start", "")), str(s["id"])), reverse=True)
    return [
        (stay, sorted(movements.get(str(stay["id"]), []), key=lambda m: str(m.get("period", {}).get("start"))))
        for stay in stays[:CIRCLE_STAYS]
    ]


def _merge(unit: Unit, mapped: Mapped, *, merged_id: str, survivor_id: str) -> None:
    merged_fact, absorbed_fact = merge_payloads(
        merged_id=merged_id,
        merged_identifiers=(mapped.prior or {}).get("identifiers", []),
        survivor_id=survivor_id,
        event_time=mapped.event_time,
        control_id=mapped.header.control_id,
    )
    for stream, payload in ((f"Patient/{merged_id}", merged_fact), (f"Patient/{survivor_id}", absorbed_fact)):
        unit.facts.add(
            stream=stream,
            message_id=unit.message_id,
            event_time=mapped.event_time,
            kind=str(payload["kind"]),
            payload=payload,
        )
    unit.links.link(merged_id=merged_id, survivor_id=survivor_id, now=unit.now)
    unit._survivors.clear()
    _refold_patient(unit, merged_id, action=mapped.action)
    # the survivor first: the merged patient's stays (and their NdE declarations) are now about him
    _refold_patient(unit, survivor_id, action=mapped.action)
    stays, _ = unit.store.search(
        "Encounter", [("patient", None, f"Patient/{merged_id}")], limit=MAX_REFOLD, count=False
    )
    for stay in stays:
        if "partOf" not in stay.content:  # movements follow their stay's refold
            _refold_stay(unit, stay.id, action=mapped.action)


def _refold_patient(unit: Unit, patient_id: str, *, action: str) -> None:
    patient = fold_patient(unit.facts.of(f"Patient/{patient_id}", kinds=PATIENT_KINDS))
    if patient is None:
        return
    _put(unit, patient, action=action)


def _redirect(unit: Unit, resource: JSON) -> JSON:
    """A stay of a merged patient belongs to the survivor."""
    ref = str(resource.get("subject", {}).get("reference", ""))
    if not ref.startswith("Patient/"):
        return resource
    survivor = unit.survivor(ref.removeprefix("Patient/"))
    return {**resource, "subject": {"reference": f"Patient/{survivor}"}}


def _refold_stay(unit: Unit, stay_id: str, *, action: str) -> None:
    facts = [VisitFact.from_payload(p) for p in unit.facts.of(f"Encounter/{stay_id}")]
    # no copy of the result: it shares parts with the facts, read only, and what follows builds new dicts
    stay = fold_stay(facts, natures=unit.tables.codes.get("MovementNature"), copy=False)
    if stay.encounter is None:
        return  # nothing but cancels or corrections of movements never seen: nothing is created
    encounter = _redirect(unit, stay.encounter)
    movements = [_redirect(unit, m) for m in stay.movements]
    # ANS NdE flux 3: the stay's admission/discharge declarations, written in the same transaction (the
    # patient was refolded before the stay, so reading him before the stay's writes changes nothing)
    patient = unit.store.get("Patient", patient_reference(encounter).removeprefix("Patient/"))
    declared = declarations(
        stay=encounter,
        inserts=stay.inserts,
        patient=patient.content if patient else None,
        event_types=unit.tables.codes["ADT_to_TRE_R254"],
    )
    # everything the stay writes, read in one query rather than one each by the writes below
    unit.store.preload((str(r["resourceType"]), str(r["id"])) for r in [encounter, *movements, *declared])
    stored_before = unit.store.get("Encounter", str(encounter["id"])) is not None  # (the identity map's)
    # searched before the stay's writes, which then wait for the unit's one flush instead of this search's
    stored = _stored_movements(unit, stay_id) if stored_before else []
    _put(unit, encounter, action=action)
    _write_movements(unit, movements, stored=stored)
    for declaration in declared:
        _put(unit, declaration, action=action)


def _stored_movements(unit: Unit, stay_id: str) -> list[StoredResource]:
    """The movement Encounters stored ``partOf`` the stay: the safety net of :func:`_write_movements`.

    Only for a stay stored before its refold: movements are written only after their stay, by
    :func:`_write_movements`, so none can be ``partOf`` a stay never stored (a deleted stay is still
    stored). That is the first message of every stay: one statement fewer. Searched before the refold
    writes anything: what it finds that the refold writes again is in the fold's list, and the rest is
    what the store holds either way."""
    stored, _ = unit.store.search(
        "Encounter", [("part-of", None, f"Encounter/{stay_id}")], limit=MAX_REFOLD, count=False
    )
    return stored


def _write_movements(unit: Unit, movements: list[JSON], *, stored: list[StoredResource]) -> None:
    """Movement Encounters ``partOf`` the stay; one that a later cancel removed becomes entered-in-error.

    ``stored`` (:func:`_stored_movements`) is the safety net for movements the fold no longer lists (facts
    forgotten by a reprocessing, rows of an older id scheme): each becomes entered-in-error."""
    current = {str(m["id"]) for m in movements}
    for movement in movements:
        _put(unit, movement)
    for old in stored:
        if old.id not in current and old.content.get("status") != "entered-in-error":
            _put(unit, {**old.content, "status": "entered-in-error"})


def _put(unit: Unit, resource: JSON, *, action: str | None = None) -> StoredResource | None:
    """Write ``resource`` if it changed; with ``action``, queue the change for the topics."""
    # the index entries only for a version written: most resources a message refolds are unchanged
    stored, previous = unit.store.write(resource, now=unit.now, index=lambda: search_entries(resource))
    if stored is previous:
        return None
    unit.result.changed.append(stored)
    if action is not None:
        unit.pending.append((Change(previous.content if previous else None, stored.content, action), stored))
    return stored


def _notify(unit: Unit, change: Change, stored: StoredResource) -> None:
    topics = fired(stored.type, change, heard=unit.heard)
    if not topics:
        return  # most changes interest no subscription: skip building the match target
    patient, target = _target(unit, stored)
    context = [{"reference": f"Patient/{patient['id']}"}] if patient and stored.type != "Patient" else []
    if stored.type == "CareTeam":
        joined, left = members_changed(change.prev, change.new)
        context += [{"reference": m["reference"], "change": "joined"} for m in joined if m.get("reference")]
        context += [{"reference": m["reference"], "change": "left"} for m in left if m.get("reference")]
    for topic in topics:
        unit.result.topics.append(topic.code)
        unit.result.notifications += _enqueue(unit, topic, stored, target=target, context=context)


def _target(unit: Unit, stored: StoredResource) -> tuple[JSON | None, Target]:
    content = stored.content
    if stored.type == "Patient":
        patient: JSON | None = content
    else:
        ref = patient_reference(content)
        found = unit.store.get("Patient", ref.removeprefix("Patient/")) if ref.startswith("Patient/") else None
        # a declaration received from another emitter may name a patient we do not know: its contained copy
        patient = found.content if found else contained_subject(content)
    aliases = unit.links.merged_into(str(patient["id"])) if patient else []
    alias_identifiers: list[JSON] = []
    for alias in aliases:
        merged = unit.store.get("Patient", alias)
        if merged is not None:
            alias_identifiers += merged.content.get("identifier", [])
    target = Target(
        resource=content,
        patient=patient,
        alias_refs=tuple(f"Patient/{a}" for a in aliases),
        alias_identifiers=tuple(alias_identifiers),
        care_team_identifiers=_circle_identifiers(unit, stored, patient),
    )
    return patient, target


def _circle_identifiers(unit: Unit, stored: StoredResource, patient: JSON | None) -> tuple[JSON, ...]:
    """Identifiers of the active members of the patient's circle, for ``care-team-member`` filters."""
    if stored.type == "CareTeam":
        team: JSON | None = stored.content
    elif patient is not None:
        found = unit.store.get("CareTeam", careteam_id(unit.survivor(str(patient["id"]))))
        team = found.content if found else None
    else:
        team = None
    return tuple(
        {"system": system, "value": value}
        for p in (team or {}).get("participant", [])
        if (ident := p.get("member", {}).get("identifier")) and not p.get("period", {}).get("end")
        # a professional is matched under any form of his national id (RPPS, idNatPs)
        for system, value in ps_identifier_forms(str(ident.get("system", "")), str(ident.get("value", "")))
    )


def _restricted(patient: JSON | None) -> bool:
    """Labelled ``R`` (v3-Confidentiality) from PAM-FR PD1-12 = Y."""
    labels = ((patient or {}).get("meta") or {}).get("security", [])
    return any(label.get("code") == "R" for label in labels)


def _enqueue(unit: Unit, topic: Topic, focus: StoredResource, *, target: Target, context: list[JSON]) -> int:
    subs, outbox = unit.storage.subscriptions, unit.storage.outbox
    queued = 0
    hidden = not unit.confidential_to_platforms and _restricted(target.patient)
    for sub in unit.listening(topic.url):
        if (hidden and sub.owner) or not matches(sub.filters, target):
            continue  # a protected patient (PD1-12 = Y) is not announced to platforms
        number = subs.next_event_number(sub.id)
        outbox.add(
            subscription_id=sub.id,
            event_number=number,
            notification_type="event-notification",
            topic=topic.url,
            occurred_at=unit.now,
            focus=(focus.type, focus.id, focus.version_id),
            context=context,
        )
        queued += 1
    return queued
