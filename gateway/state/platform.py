"""Platform edits of a care circle (FHIR API): replace its platform members, or add / end one member.

Platform members are kept as the platform last wrote them (a ``platform`` fact on the CareTeam's stream)
and folded with the hospital members; a hospital message never touches them. The reverse holds too: a
platform may not add, change or remove a hospital-sourced participant, and a PUT that tries is refused
(422) rather than silently rewritten.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from fhir.resources.R4B.careteam import CareTeam as CareTeamModel
from pydantic import ValidationError

from gateway.db.engine import DbConnection as Connection
from gateway.db.repo import StoredResource
from gateway.db.unit import UnitOfWork
from gateway.errors import (
    BusinessRuleError,
    FhirError,
    NotFoundError,
    PreconditionFailedError,
    RequiredElementError,
    StructureError,
)
from gateway.mapping.tables import Tables
from gateway.state.apply import PLATFORM, Unit, refold_careteam
from gateway.state.careteam import SOURCE_EXT, is_platform, source_of

JSON = dict[str, Any]


def _tag(participant: JSON, platform: str) -> JSON:
    """A platform participant, with its source extension set to this platform."""
    extensions = [e for e in participant.get("extension", []) if e.get("url") != SOURCE_EXT]
    return {**participant, "extension": [{"url": SOURCE_EXT, "valueString": f"platform:{platform}"}, *extensions]}


def _member_key(member: JSON) -> str:
    return str(member.get("reference") or member.get("identifier") or member.get("display"))


def _role_codes(participant: JSON) -> frozenset[str]:
    return frozenset(c.get("code", "") for role in participant.get("role", []) for c in role.get("coding", []))


def _load(unit: Unit, team_id: str, *, if_match: str | None) -> StoredResource:
    current = unit.store.get("CareTeam", team_id, for_update=True)
    if current is None or current.deleted:
        raise NotFoundError(f"CareTeam/{team_id} not found")
    if current.content.get("status") == "inactive":
        raise BusinessRuleError("this care circle belongs to a patient merged into another: edit the survivor's")
    if if_match is not None and if_match.strip().removeprefix("W/").strip('"') != str(current.version_id):
        raise PreconditionFailedError(f"CareTeam/{team_id} is at version {current.version_id}")
    return current


def _save(unit: Unit, current: StoredResource, participants: list[JSON]) -> StoredResource:
    unit.facts.lock([f"CareTeam/{current.id}", str(current.content["subject"]["reference"])])
    unit.facts.add(
        stream=f"CareTeam/{current.id}",
        message_id=0,
        event_time=unit.now,
        kind=PLATFORM,
        payload={"at": unit.now.isoformat(), "participants": participants},
    )
    patient_id = str(current.content["subject"]["reference"]).removeprefix("Patient/")
    refold_careteam(unit, patient_id)
    unit.notify_all()
    stored = unit.store.get("CareTeam", current.id)
    assert stored is not None
    return stored


def _platform_participants(team: JSON) -> list[JSON]:
    return [p for p in team.get("participant", []) if is_platform(p)]


def _theirs(participants: list[JSON], platform: str) -> list[JSON]:
    """Platform participants another platform added (an authenticated platform may not touch them)."""
    return [p for p in participants if is_platform(p) and source_of(p) != f"platform:{platform}"]


def replace(
    conn: Connection,
    team_id: str,
    body: JSON,
    *,
    tables: Tables,
    now: datetime,
    platform: str,
    if_match: str | None,
    own_only: bool = False,
) -> tuple[StoredResource, Unit]:
    """PUT: the body's platform participants become the circle's; its hospital ones must be unchanged.

    With ``own_only`` (an authenticated platform), other platforms' members must come back unchanged too.
    """
    if body.get("resourceType") != "CareTeam" or body.get("id") not in (None, team_id):
        raise FhirError("the body must be this CareTeam")
    try:
        CareTeamModel.model_validate({k: v for k, v in body.items() if k != "meta"})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise StructureError(f"invalid CareTeam: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    unit = Unit.of(UnitOfWork(conn), now=now, message_id=0, tables=tables)
    current = _load(unit, team_id, if_match=if_match)
    if body.get("subject") and body["subject"] != current.content["subject"]:
        raise BusinessRuleError("a care circle stays with its patient: subject cannot change")
    sent = body.get("participant", [])
    hospital_now = [p for p in current.content.get("participant", []) if not is_platform(p)]
    hospital_sent = [p for p in sent if source_of(p) and not is_platform(p)]
    if sorted(map(_member_fingerprint, hospital_sent)) != sorted(map(_member_fingerprint, hospital_now)):
        raise BusinessRuleError(
            "hospital-sourced participants are maintained by the hospital feed: send them back unchanged"
        )
    kept: list[JSON] = []
    if own_only:
        kept = _theirs(current.content.get("participant", []), platform)
        if sorted(map(_member_fingerprint, _theirs(sent, platform))) != sorted(map(_member_fingerprint, kept)):
            raise BusinessRuleError("members other platforms added are theirs: send them back unchanged")
        sent = [p for p in sent if p not in _theirs(sent, platform)]
    mine = [_tag(p, platform) for p in sent if not source_of(p) or is_platform(p)]
    for participant in mine:
        if not participant.get("member"):
            raise RequiredElementError("each participant needs a member")
    mine = _started(mine, _platform_participants(current.content), now=now)
    return _save(unit, current, kept + mine), unit


def _started(participants: list[JSON], known: list[JSON], *, now: datetime) -> list[JSON]:
    """CDS 2.0.1: each participant has a start. One sent without it started when the circle first had it
    (same member and role), else now: the PUT that added it."""
    starts = {
        (_member_key(p["member"]), _role_codes(p)): p["period"]["start"]
        for p in known
        if p.get("member") and p.get("period", {}).get("start")
    }
    out = []
    for participant in participants:
        period = participant.get("period", {})
        if not period.get("start"):
            start = starts.get((_member_key(participant["member"]), _role_codes(participant)))
            period = {**period, "start": start or now.isoformat(timespec="seconds")}
        out.append({**participant, "period": period})
    return out


def _member_fingerprint(participant: JSON) -> str:
    return orjson.dumps(participant, option=orjson.OPT_SORT_KEYS).decode()


def _param(params: JSON, name: str) -> JSON | None:
    if params.get("resourceType") != "Parameters":
        raise FhirError("the body must be a Parameters resource")
    return next((p for p in params.get("parameter", []) if p.get("name") == name), None)


def _member_args(params: JSON, *, moment: str, now: datetime) -> tuple[JSON, JSON | None, str]:
    """(member, role or None, the start/end date: given, else now) from an operation's Parameters."""
    member = (_param(params, "member") or {}).get("valueReference")
    if not member:
        raise RequiredElementError("parameter 'member' (valueReference) is required")
    role = (_param(params, "role") or {}).get("valueCodeableConcept")
    when = (_param(params, moment) or {}).get("valueDateTime") or now.isoformat(timespec="seconds")
    return member, role, str(when)


def add_member(
    conn: Connection, team_id: str, params: JSON, *, tables: Tables, now: datetime, platform: str
) -> tuple[StoredResource, Unit]:
    """``$add-member``: member (Reference), role (CodeableConcept, optional), start (dateTime, optional)."""
    member, role, start = _member_args(params, moment="start", now=now)
    unit = Unit.of(UnitOfWork(conn), now=now, message_id=0, tables=tables)
    current = _load(unit, team_id, if_match=None)
    mine = _platform_participants(current.content)
    participant: JSON = {"member": member, "period": {"start": start}}
    if role:
        participant["role"] = [role]
    already = any(
        _member_key(p["member"]) == _member_key(member)
        and not p.get("period", {}).get("end")
        and _role_codes(p) == _role_codes(participant)
        for p in mine
    )
    if not already:
        mine.append(_tag(participant, platform))
    return _save(unit, current, mine), unit


def end_member(
    conn: Connection,
    team_id: str,
    params: JSON,
    *,
    tables: Tables,
    now: datetime,
    platform: str,
    own_only: bool = False,
) -> tuple[StoredResource, Unit]:
    """``$end-member``: member (Reference), role (optional: every role otherwise), end (optional: now)."""
    member, role, end = _member_args(params, moment="end", now=now)
    unit = Unit.of(UnitOfWork(conn), now=now, message_id=0, tables=tables)
    current = _load(unit, team_id, if_match=None)
    wanted = frozenset(c.get("code", "") for c in (role or {}).get("coding", []))
    mine, ended = [], 0
    for participant in _platform_participants(current.content):
        same = _member_key(participant["member"]) == _member_key(member)
        if own_only and source_of(participant) != f"platform:{platform}":
            same = False
        if same and (not wanted or _role_codes(participant) == wanted) and not participant.get("period", {}).get("end"):
            mine.append({**participant, "period": {**participant.get("period", {}), "end": end}})
            ended += 1
        else:
            mine.append(participant)
    if not ended:
        hospital = any(_member_key(p["member"]) == _member_key(member) for p in current.content.get("participant", []))
        if hospital:
            raise BusinessRuleError("this member comes from the hospital feed: only the hospital ends it")
        raise NotFoundError("no open platform participation for this member")
    return _save(unit, current, mine), unit
