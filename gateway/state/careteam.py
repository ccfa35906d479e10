"""The care circle (cercle de soins): one CareTeam per patient, folded from three sources.

1. Patient-level participations from hospital messages (ROL ODRP/SUBS/RT/CP/FHCP, PD1-4): ROL-2 AD
   opens (ROL-5 or the event date), UP changes the period, DE ends it (ROL-6 or the event date), UC
   confirms (opens when not open). They are replayed in event order, so arrival order does not matter;
   a member who leaves and comes back gets a new participant entry.
2. Stay-level members, derived from the stays as they stand (already folded, order-independent): the
   doctors of each stay (PV1-7 attending, PV1-17 admitting, PV1-8 referring) for the stay's period, and
   the unit in charge (UF médicale, ZBE-7) for each movement's period. A discharge ends them, A13 reopens
   them, a cancelled stay contributes nothing.
3. Members added by platforms through the FHIR API, kept as the platform last wrote them: a hospital
   message never ends or removes them.

Every participant says where it came from (extension ``careteam-participant-source``). The ANS "Gestion
du cercle de soins" IG shape: status, name, subject, period, managingOrganization, participants with role,
member and period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway.canonical import CANONICAL_BASE
from gateway.mapping import directory
from gateway.mapping.ids import resource_id

JSON = dict[str, Any]
SOURCE_EXT = f"{CANONICAL_BASE}/StructureDefinition/careteam-participant-source"
#: The circle's business identifier (CDS 2.0.1 requires one): its id under the gateway's system.
CARETEAM_SYSTEM = f"{CANONICAL_BASE}/sid/careteam"
CDS_PROFILE = "https://interop.esante.gouv.fr/ig/fhir/cds/StructureDefinition/cds-ihe-careteam"
OPENING = frozenset({"AD", "UC"})
UNIT_ROLE = "UF"


@dataclass(frozen=True, slots=True)
class Participation:
    """One hospital statement about a patient-level member (a ROL segment, or PD1-4)."""

    member: JSON  # a Reference: {"reference": "Practitioner/…", "display": …}
    role: str  # ROL-3 code: ODRP, SUBS, RT, CP, FHCP…
    action: str  # ROL-2: AD, UP, DE, UC
    event_time: datetime
    control_id: str
    source: str
    start: str | None = None
    end: str | None = None
    #: The stay a stay-bound member belongs to (a ROL sent with a visit, its end "none"): ends with it.
    stay: str | None = None

    def sort_key(self) -> tuple[datetime, str, str]:
        return self.event_time, self.control_id, self.action

    def to_payload(self) -> JSON:
        return {
            "member": self.member,
            "role": self.role,
            "action": self.action,
            "event_time": self.event_time.isoformat(),
            "control_id": self.control_id,
            "source": self.source,
            "start": self.start,
            "end": self.end,
            **({"stay": self.stay} if self.stay else {}),
        }

    @classmethod
    def from_payload(cls, data: JSON) -> Participation:
        return cls(
            member=data["member"],
            role=data["role"],
            action=data["action"],
            event_time=datetime.fromisoformat(data["event_time"]),
            control_id=data.get("control_id", ""),
            source=data.get("source", "hospital"),
            start=data.get("start"),
            end=data.get("end"),
            stay=data.get("stay"),
        )


@dataclass(slots=True)
class Entry:
    member: JSON
    role: str
    source: str
    start: str | None
    end: str | None = None
    extra: JSON = field(default_factory=dict)
    stay: str | None = None

    def key(self) -> tuple[str, str]:
        return str(self.member.get("reference") or self.member.get("identifier")), self.role


def careteam_id(patient_id: str) -> str:
    return resource_id("CareTeam", f"patient|{patient_id}")


def replay_participations(participations: list[Participation]) -> list[Entry]:
    """Patient-level members from ROL/PD1 statements, in event order."""
    closed: list[Entry] = []
    open_: dict[tuple[str, str], Entry] = {}
    for p in sorted(participations, key=Participation.sort_key):
        key = (str(p.member.get("reference")), p.role)
        current = open_.get(key)
        moment = p.event_time.isoformat(timespec="seconds")
        if p.action in OPENING and current is not None and p.stay and current.stay not in (None, p.stay):
            closed.append(open_.pop(key))  # stay-bound in another stay: that one ends with its own stay
            open_[key] = _opened(p, moment)
        elif p.action in OPENING and current is None:
            open_[key] = _opened(p, moment)
        elif p.action == "UP" and current is not None:
            current.start = p.start or current.start
            current.end = p.end
            current.stay = p.stay
        elif p.action == "UP":
            open_[key] = _opened(p, moment)
        elif p.action == "DE" and current is not None:
            current.end = p.end or moment
        if key in open_ and open_[key].end:
            closed.append(open_.pop(key))  # ended: a later AD opens a new participant entry
    return closed + list(open_.values())


def _opened(p: Participation, moment: str) -> Entry:
    return Entry(member=p.member, role=p.role, source=p.source, start=p.start or moment, end=p.end, stay=p.stay)


def end_with_stays(entries: list[Entry], stays: list[tuple[JSON, list[JSON]]]) -> list[Entry]:
    """Stay-bound members (sent without a real end) end when their stay ends, like PV1-7's doctors; a
    cancelled stay takes them away."""
    by_id = {str(stay.get("id")): stay for stay, _ in stays}
    out = []
    for entry in entries:
        stay = by_id.get(entry.stay or "")
        if stay is not None and stay.get("status") in ("cancelled", "entered-in-error"):
            continue
        if stay is not None and entry.end is None and stay.get("period", {}).get("end"):
            entry.end = stay["period"]["end"]
        out.append(entry)
    return out


def stay_entries(stay: JSON, movements: list[JSON], *, source: str) -> list[Entry]:
    """Doctors of a stay for its period; the unit in charge for each movement's period."""
    if stay.get("status") in ("cancelled", "entered-in-error"):
        return []
    period = stay.get("period", {})
    out = []
    for participant in stay.get("participant", []):
        role = directory.STAY_ROLES.get(str(_first_code(participant)))
        if role and participant.get("individual"):
            out.append(
                Entry(
                    member=participant["individual"],
                    role=role,
                    source=source,
                    start=period.get("start"),
                    end=period.get("end"),
                )
            )
    for movement in movements:
        unit = movement.get("serviceProvider")
        if not unit or movement.get("status") in ("cancelled", "entered-in-error", "planned"):
            continue
        mperiod = movement.get("period", {})
        out.append(
            Entry(member=unit, role=UNIT_ROLE, source=source, start=mperiod.get("start"), end=mperiod.get("end"))
        )
    return _coalesce(out)


def _first_code(participant: JSON) -> Any:
    """The first coding's code of a stay participant's types (what says PV1-7, -8 or -17)."""
    for kind in participant.get("type", ()):
        for coding in kind.get("coding", ()):
            return coding.get("code")
    return None


def _coalesce(entries: list[Entry]) -> list[Entry]:
    """One entry per member and role over touching or overlapping periods (consecutive movements in the
    same UF, the same doctor in two merged circles)."""
    by_key: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        member = entry.member
        key = str(member.get("reference") or member.get("identifier")), entry.role  # Entry.key, inline
        group = by_key.get(key)
        if group is None:
            by_key[key] = [entry]
        else:
            group.append(entry)
    out: list[Entry] = []
    for group in by_key.values():
        if len(group) == 1:  # most members hold one entry: nothing to sort or join
            out.append(group[0])
            continue
        group.sort(key=_start)
        current = group[0]
        for nxt in group[1:]:
            if current.end is None or (nxt.start or "") <= current.end:
                if current.end is not None and (nxt.end is None or nxt.end > current.end):
                    current.end = nxt.end
                continue
            out.append(current)
            current = nxt
        out.append(current)
    return out


def _start(entry: Entry) -> str:
    return entry.start or ""


#: (member as stated, role, source) → its Reference as :func:`directory.member` makes it: a circle is folded
#: again on every message about the patient, naming the same doctors and units each time (half the fold's
#: time went into making their references, and the directory resources made with them, unused here).
#: Shared read only, as the stored contents are; emptied past :data:`MEMBER_REFERENCES` entries.
_MEMBER_REFERENCES: dict[tuple[bytes, str, str], JSON] = {}
MEMBER_REFERENCES = 1024


def _member_reference(member: JSON, role: str, source: str) -> JSON:
    """``directory.member(member, role=role, source=source).reference``, made once per member, role and
    source. The key is the member's JSON in its own key order, which the reference keeps: equal keys, one
    reference."""
    key = (orjson.dumps(member), role, source)
    found = _MEMBER_REFERENCES.get(key)
    if found is None:
        if len(_MEMBER_REFERENCES) >= MEMBER_REFERENCES:
            _MEMBER_REFERENCES.clear()
        found = _MEMBER_REFERENCES[key] = directory.member(member, role=role, source=source).reference
    return found


def _participant(entry: Entry, roles: dict[str, JSON], member: JSON) -> JSON:
    out: JSON = {"extension": [{"url": SOURCE_EXT, "valueString": entry.source}]}
    if entry.role in roles:
        out["role"] = [roles[entry.role]]
    out["member"] = member
    period = {k: v for k, v in (("start", entry.start), ("end", entry.end)) if v}
    if period:
        out["period"] = period
    return out


def source_of(participant: JSON) -> str:
    return next((e.get("valueString", "") for e in participant.get("extension", []) if e.get("url") == SOURCE_EXT), "")


def is_platform(participant: JSON) -> bool:
    return source_of(participant).startswith("platform")


def fold_careteam(
    *,
    patient: JSON,
    participations: list[Participation],
    stays: list[tuple[JSON, list[JSON]]],
    platform_participants: list[JSON],
    roles: dict[str, JSON],
    merged_into: str | None = None,
    since: Callable[[], str | None] | None = None,
) -> JSON:
    """The patient's CareTeam; ``roles`` maps a role code (ROL-3, ``UF``) to its CodeableConcept. Hospital
    members are PractitionerRole and Organization references (CDS 2.0.1), whose resources the engine
    wrote from the messages that named them (``gateway/mapping/directory.py``).

    ``since`` gives the circle's start when no member has one (read only then: it costs a query)."""
    hospital = end_with_stays(replay_participations(participations), stays)
    for stay, movements in sorted(stays, key=lambda s: str(s[0].get("id"))):
        hospital += stay_entries(stay, movements, source=_stay_source(stay))
    hospital = _coalesce(hospital)
    hospital.sort(key=lambda e: (e.start or "", e.role, str(e.member.get("reference") or e.member.get("display"))))
    participants = [_participant(e, roles, _member_reference(e.member, e.role, e.source)) for e in hospital]
    participants += [dict(p) for p in platform_participants]
    patient_id = str(patient["id"])
    team: JSON = {
        "resourceType": "CareTeam",
        "id": careteam_id(patient_id),
        "meta": {"profile": [CDS_PROFILE]},
        "status": "inactive" if merged_into else "active",
        "name": "Cercle de soins",
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    # CDS 2.0.1: a circle has a business identifier and a period; it began with its first member, or
    # (no member yet) when the gateway first heard of the patient.
    team["identifier"] = [{"system": CARETEAM_SYSTEM, "value": team["id"]}]
    starts = [p["period"]["start"] for p in participants if p.get("period", {}).get("start")]
    start = min(starts) if starts else (since() if since else None)
    if start:
        team["period"] = {"start": start}
    if merged_into:
        team["note"] = [{"text": f"Patient merged into Patient/{merged_into}: see that patient's care circle"}]
    elif participants:
        team["participant"] = participants
    return team


def _stay_source(stay: JSON) -> str:
    source = str(stay.get("meta", {}).get("source", ""))
    return f"hospital:{source.rsplit('/', 1)[-1]}" if source else "hospital"
