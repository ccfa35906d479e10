"""The pure mapping engine: a parsed ADT message + the tables → the facts the state engine applies.

No I/O, no SQL, no web framework: the same message and tables always give the same output, which is
what makes golden files, ``gateway convert`` and the sandbox trustworthy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.canonical import FR_CORE_SD as FR_CORE
from gateway.errors import MappingError, UnsupportedError, UnsupportedEventError
from gateway.hl7.er7 import Message, Repetition, Segment
from gateway.hl7.er7 import Path as HL7Path
from gateway.mapping import directory
from gateway.mapping.ids import resource_id
from gateway.mapping.tables import ACTIONS, IDENTITY_KINDS, EventSpec, SegmentMap, Tables, load_tables
from gateway.mapping.transforms import (
    BIRTH_LIST_GIVEN_NAME,
    BIRTH_PLACE,
    PARIS,
    PERSON_TRANSFORMS,
    TRANSFORMS,
    MapContext,
    Transform,
    local_system,
    parse_dtm,
)

PROFILE_PATIENT = f"{FR_CORE}/fr-core-patient"
PROFILE_PATIENT_INS = f"{FR_CORE}/fr-core-patient-ins"
PROFILE_ENCOUNTER = f"{FR_CORE}/fr-core-encounter"
#: Identifier types that mean "an INS" (CX-5 INS maps to INS-NIR; the authority table then decides).
INS_TYPES = frozenset({"INS", "INS-NIR", "INS-NIA", "INS-C", "INS-NIR-TEST", "INS-NIR-DEMO"})
#: The INS kinds that make a production, qualified identity (fr-core-patient-ins).
PRODUCTION_INS = frozenset({"INS-NIR", "INS-NIA"})
#: A qualified INS (production, test or demo OID) makes the Patient a PatientINS when it has what that
#: profile requires (official name, birth date, gender, birth place with its INSEE code).
#: The demo OID is left out: FR Core 2.1.0's fr-core-1 invariant names the test OID twice and never the
#: demo one, so a VALI patient with a demo INS cannot conform to fr-core-patient-ins (it claims fr-core-patient).
QUALIFIED_INS = PRODUCTION_INS | {"INS-NIR-TEST"}
INS_TABLE = "InsAuthority_to_IdentifierType"
#: NK1 (next of kin, person to notify) → Patient.contact.
CONTACT_MAP = "NK1_to_Contact"
INS_C_SYSTEM = "urn:oid:1.2.250.1.213.1.4.2"
SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"})
HL7_NULL = '""'
IDENTITY_RELIABILITY = f"{FR_CORE}/fr-core-identity-reliability"
IDENTITY_STATUS_SYSTEM = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445"
VALIDATION_MODE_SYSTEM = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-mode-validation-identity"
#: fr-core-cs-mode-validation-identity: the identity documents PAM-FR's ZFD-7 names
VALIDATION_MODES = frozenset({"AN", "CC", "CE", "CM", "CN", "CS", "LE", "PA", "PC", "TC"})


@dataclass(frozen=True, slots=True)
class Header:
    """What MSH and EVN say about the message itself."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str
    message_type: str
    trigger: str
    version: str
    sent_at: datetime | None

    @property
    def sender(self) -> tuple[str, str]:
        return self.sending_application, self.sending_facility


@dataclass(slots=True)
class Mapped:
    """The facts of one message, ready for the state engine."""

    header: Header
    event: EventSpec
    event_time: datetime
    action: str
    patient: dict[str, Any]
    encounter: dict[str, Any] | None
    movement: dict[str, Any] | None
    practitioners: list[dict[str, Any]]
    warnings: list[tuple[str, str]] = field(default_factory=list)
    #: When the sender recorded the event (EVN-2, else MSH-7): orders corrections of one movement.
    recorded_at: datetime | None = None
    #: MRG: the patient a merge (A40), an identifier change (A47) or an account move (A44) comes from.
    prior: dict[str, Any] | None = None
    #: Care circle statements: ROL segments and PD1-4 (member reference, role, action, period).
    participations: list[dict[str, Any]] = field(default_factory=list)
    #: A44 without PV1 (PAM-FR ADT_A43): the account (MRG-3, else PID-18) whose stays move to the patient.
    account: dict[str, Any] | None = None
    #: The PractitionerRole and Organization resources the circle's members named here point at.
    directory: list[dict[str, Any]] = field(default_factory=list)


def read_header(message: Message) -> Header:
    """MSH fields, read leniently: routing uses MSH-9.1 and MSH-9.2 only."""
    msh = message.msh
    sent = parse_dtm(msh.get(7))
    return Header(
        sending_application=msh.get(3).strip(),
        sending_facility=msh.get(4).strip(),
        receiving_application=msh.get(5).strip(),
        receiving_facility=msh.get(6).strip(),
        control_id=msh.get(10).strip(),
        message_type=msh.get(9, 1).strip().upper(),
        trigger=msh.get(9, 2).strip().upper(),
        version=msh.get(12, 1).strip(),
        sent_at=sent[0] if sent else None,
    )


#: PAM-FR PD1-12 = Y (patient under protection: no disclosure) → meta.security R (v3-Confidentiality).
CONFIDENTIALITY_RESTRICTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
    "code": "R",
    "display": "restricted",
}


def _protection(pd1: Any) -> bool | None:
    """PD1-12 (protection indicator): True for Y, False for N, None when the message says nothing."""
    if pd1 is None:
        return None
    value = pd1.get(12).strip().upper()
    return {"Y": True, "N": False}.get(value)


#: DeathOnDischarge rows kept read (the table has a few; more rows than this are read again as they come)
DEATH_RULE_MEMO_SIZE = 64


@functools.lru_cache(maxsize=DEATH_RULE_MEMO_SIZE)
def death_rule(row_code: str) -> tuple[str, HL7Path, str]:
    """A DeathOnDischarge code such as ``ZFM-2=9``: its position, parsed, and the value that means death.

    Read once per row, not on every discharge (a regular expression and a dataclass a row, ~1.4 µs);
    a malformed position raises each time it is read, as before (nothing is kept).
    """
    position, _, code = row_code.partition("=")
    return position, HL7Path.parse(position), code


class Engine:
    """Holds the validated tables; :meth:`map` is the pure conversion."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        #: each segment map's rules compiled once into plain tuples (see :func:`compile_rules`)
        self._plans = {name: compile_rules(seg_map) for name, seg_map in tables.segments.items()}
        #: what pure steps made from a text before (``MapContext.memo``), for this engine's tables alone
        self._memo: dict[tuple[Any, ...], Any] = {}

    @classmethod
    def from_directory(cls, directory: Path) -> Engine:
        return cls(load_tables(directory, transforms=frozenset(TRANSFORMS)))

    def map(self, message: Message, *, header: Header | None = None) -> Mapped:
        """``header``: the message's :func:`read_header`, when the caller has read it already."""
        header = header or read_header(message)
        event = self._route(header)
        ctx = MapContext(tables=self.tables, sender=header.sender, memo=self._memo)
        ctx.warnings.extend(("MSH", w) for w in message.warnings)
        self._check_header(message, header, ctx)
        self._check_evn(message, header, ctx)
        patient = self._patient(message, ctx)
        participations = self._participations(message, ctx)
        account = self._account_to_move(message, ctx) if event.kind == "move-account" else None
        visit = event.kind not in IDENTITY_KINDS and account is None  # their PV1 (often "PV1|1|N") is not read
        movement = self._movement(message, ctx) if visit else None
        encounter = self._encounter(message, ctx, patient_id=patient["id"]) if visit else None
        if encounter is not None:
            bind_to_stay(participations, stay_id=str(encounter["id"]))
        if visit and event.kind == "discharge":
            self._death_on_discharge(message, patient, encounter, movement, ctx)
        action = (movement or {}).get("action") or event.action
        if action not in ACTIONS:
            ctx.location = "ZBE-4"
            ctx.warn(f"movement action {action!r} is not INSERT, UPDATE or CANCEL; the event's default applies")
            action = event.action
        return Mapped(
            header=header,
            event=event,
            event_time=self._event_time(message, movement, header),
            action=action,
            patient=patient,
            encounter=encounter,
            movement=movement,
            practitioners=sorted(ctx.practitioners.values(), key=lambda r: str(r["id"])),
            warnings=ctx.warnings,
            recorded_at=_recorded_at(message, header),
            prior=self._prior(message, ctx),
            participations=participations,
            account=account,
            directory=directory.of_message(
                facility=header.sending_facility or header.sending_application,
                participations=participations,
                encounter=encounter,
                movement=movement,
            )
            + [ctx.organizations[k] for k in sorted(ctx.organizations)],
        )

    # -- routing --------------------------------------------------------------------------------

    def _route(self, header: Header) -> EventSpec:
        if header.message_type != "ADT":
            raise UnsupportedError(f"unsupported message type {header.message_type or '(empty)'}", location="MSH-9.1")
        event = self.tables.events.get(header.trigger)
        if event is None:
            raise UnsupportedEventError(f"unsupported event ADT^{header.trigger or '(empty)'}", location="MSH-9.2")
        return event

    @staticmethod
    def _check_evn(message: Message, header: Header, ctx: MapContext) -> None:
        evn = message.segment("EVN")
        declared = evn.get(1).strip().upper() if evn else ""
        if declared and declared != header.trigger:
            ctx.location = "EVN-1"
            ctx.warn(f"EVN-1 {declared} disagrees with MSH-9.2 {header.trigger}; MSH-9.2 is used")

    def _check_header(self, message: Message, header: Header, ctx: MapContext) -> None:
        """Oddities that do not stop the message but that the sender should hear about (ACK warnings)."""
        structure = message.msh.get(9, 3).strip().upper()
        expected = self.tables.code("MessageStructure", header.trigger)
        if structure and expected and structure != expected.target_code:
            ctx.location = "MSH-9.3"
            ctx.warn(
                f"MSH-9.3 {structure} is not the structure of ADT^{header.trigger} ({expected.target_code}); ignored"
            )
        if header.version and header.version not in SUPPORTED_VERSIONS:
            ctx.location = "MSH-12"
            ctx.warn(f"HL7 version {header.version} is outside 2.3-2.8; read leniently as 2.5")

    # -- segments -------------------------------------------------------------------------------

    def _participations(self, message: Message, ctx: MapContext) -> list[dict[str, Any]]:
        """ROL segments (each one a statement) and PD1-4 (the médecin traitant, confirmed)."""
        out = []
        for name, segment_name in (("ROL_to_Participation", "ROL"), ("PD1_to_Participation", "PD1")):
            for segment in message.all(segment_name):
                statement = self._apply(self.tables.segments[name], segment, ctx)
                if "member" not in statement:
                    continue
                statement["role"] = str(statement.get("role", "")).upper()
                statement["action"] = str(statement.get("action", "UC")).upper()
                if self.tables.code("CareTeamRole", statement["role"]) is None:
                    ctx.location = f"{segment_name}-3"
                    ctx.warn(f"care circle role {statement['role']!r} is not in CareTeamRole; ignored")
                    continue
                out.append(statement)
        return out

    def _apply(self, seg_map: SegmentMap, segment: Segment, ctx: MapContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        fields = segment.fields
        count = len(fields)
        for number, transform, args, steps, repeat, person, location in self._plans[seg_map.name]:
            if number >= count or not fields[number]:
                continue  # most rules of a segment map name a field the message leaves empty
            ctx.location = location
            reps = segment.repetitions(number)
            if not reps:
                continue
            if person:
                for rep, *same in _people(reps) if repeat else _people(reps)[:1]:
                    if rep.component_raw(1) == HL7_NULL:
                        continue  # "" is HL7's explicit null: the value is deleted, so nothing is mapped
                    ctx.same_person = same
                    value = transform(rep, ctx, args)
                    ctx.same_person = []
                    if value is not None:
                        _set_steps(out, steps, value)
                continue
            for rep in reps if repeat else reps[:1]:  # ctx.same_person is [] outside a person's transform
                if rep.component_raw(1) == HL7_NULL:
                    continue
                value = transform(rep, ctx, args)
                if value is not None:
                    _set_steps(out, steps, value)
        if out and seg_map.defaults:
            out = {**seg_map.defaults, **out}
        return out

    def _patient(self, message: Message, ctx: MapContext) -> dict[str, Any]:
        pid = message.segment("PID")
        if pid is None:
            raise MappingError("PID segment is missing", location="PID")
        facts = self._apply(self.tables.segments[self.tables.event_segments["patient"]], pid, ctx)
        reliability = frozenset(rep.get(1).strip().upper() for rep in pid.repetitions(32))
        identifiers = filter_identifiers(facts.get("identifier", []), reliability=reliability, ctx=ctx)
        key = patient_key(identifiers)
        if key is None:
            raise MappingError("PID-3 holds no usable patient identifier (IPP)", location="PID-3")
        if "deceasedDateTime" in facts:
            facts.pop("deceasedBoolean", None)  # R4 deceased[x]: one of the two; the date says more
        has_ins = any(type_code(i) in QUALIFIED_INS for i in identifiers)
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": resource_id("Patient", key),
            "meta": {"profile": [PROFILE_PATIENT_INS if has_ins else PROFILE_PATIENT]},
            **facts,
            "identifier": identifiers,
        }
        contacts = [c for nk1 in message.all("NK1") if (c := self._apply(self.tables.segments[CONTACT_MAP], nk1, ctx))]
        for contact in contacts:
            # One relationship (the role, else the kinship): fr-core-patient slices them by coding.system
            # with no fixed value, which the suite's validator cannot tell apart (mappings/LEFT_OUT.md).
            if len(contact.get("relationship", [])) > 1:
                contact["relationship"] = contact["relationship"][:1]
        if contacts:
            patient["contact"] = contacts
        extensions = [*identity_reliability(pid, message.segment("ZFD"), tz=ctx.tz), *facts.get("extension", [])]
        if extensions:
            patient["extension"] = extensions
        if has_ins and not is_patient_ins(patient):
            patient["meta"] = {**patient.get("meta", {}), "profile": [PROFILE_PATIENT]}
        protection = _protection(message.segment("PD1"))
        if protection is not None:
            # an empty list says "PD1-12 = N": the patient fold lifts an earlier label, then drops the key
            patient["meta"]["security"] = [CONFIDENTIALITY_RESTRICTED] if protection else []
        return patient

    def _prior(self, message: Message, ctx: MapContext) -> dict[str, Any] | None:
        """MRG-1: the identifiers of the patient this message moves, merges or renames from."""
        mrg = message.segment("MRG")
        if mrg is None:
            return None
        ctx.location = "MRG-1"
        identifiers = [
            ident
            for rep in mrg.repetitions(1)
            if rep.component_raw(1) != HL7_NULL
            and (ident := TRANSFORMS["identifier_cx"](rep, ctx, {"default_type": "PI"})) is not None
        ]
        if not identifiers:
            return None
        key = patient_key(identifiers)
        return {"identifiers": identifiers, "patient_id": resource_id("Patient", key) if key else None}

    def _death_on_discharge(
        self,
        message: Message,
        patient: dict[str, Any],
        encounter: dict[str, Any] | None,
        movement: dict[str, Any] | None,
        ctx: MapContext,
    ) -> None:
        """A discharge by death (ZFM-2 = 9, or HL7 0112 "20") marks the patient deceased."""
        for row in self.tables.codes["DeathOnDischarge"].values():
            position, path, code = death_rule(row.code)
            if message.value(path).strip() != code:
                continue
            if "deceasedDateTime" not in patient:
                moment = (encounter or {}).get("period", {}).get("end") or (movement or {}).get("date")
                if moment:
                    patient["deceasedDateTime"] = moment
                    patient.pop("deceasedBoolean", None)
                else:
                    patient["deceasedBoolean"] = True
            ctx.location = position
            return

    def _movement(self, message: Message, ctx: MapContext) -> dict[str, Any] | None:
        zbe = message.segment("ZBE")
        if zbe is None:
            return None
        if zbe.get(4).strip().upper() not in ACTIONS and zbe.get(5).strip().upper() in ACTIONS:
            # ZBE-3 is forbidden, yet some senders fill it and shift every later field by one.
            ctx.location = "ZBE-3"
            ctx.warn("ZBE-3 is filled and ZBE-4 empty: fields after ZBE-3 read shifted by one")
            zbe = Segment("ZBE", [*zbe.fields[:3], *zbe.fields[4:]], message.encoding)
        movement = self._apply(self.tables.segments[self.tables.event_segments["movement"]], zbe, ctx)
        if "action" in movement:
            movement["action"] = str(movement["action"]).upper()
        nature = movement.get("nature")
        if nature and "MovementNature" in self.tables.codes and self.tables.code("MovementNature", nature) is None:
            ctx.location = "ZBE-9"
            ctx.warn(f"ZBE-9 movement nature {nature!r} is not in the PAM-FR table; kept as is")
        return movement or None

    def _encounter(self, message: Message, ctx: MapContext, *, patient_id: str) -> dict[str, Any] | None:
        pv1 = message.segment("PV1")
        if pv1 is None:
            raise MappingError("PV1 segment is missing", location="PV1")
        facts = self._apply(self.tables.segments[self.tables.event_segments["encounter"]], pv1, ctx)
        visit = next((i for i in facts.get("identifier", []) if type_code(i) == "VN"), None)  # PV1-19
        if visit is None:
            visit = self._account_as_visit(message, ctx)
            if visit is not None:
                facts.setdefault("identifier", []).append(visit)
        if visit is None:
            raise MappingError(
                "PV1-19 (visit number) and PID-18 (account number) are empty: the stay cannot be identified",
                location="PV1-19",
            )
        reported = len(ctx.warnings)
        account = account_of(message, ctx)
        del ctx.warnings[reported:]  # PID-18's oddities are reported once, with the Patient's identifiers
        if account is not None and account not in facts["identifier"]:
            # the stay's account (NDA): an A44 without PV1 finds the stays to move by it
            facts["identifier"].append(account)
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": resource_id("Encounter", f"{visit['system']}|{visit['value']}"),
            # meta.source names the sending facility: subscriptions may filter on it (``facility``).
            "meta": {"profile": [PROFILE_ENCOUNTER], "source": local_system("sender", ctx.sender[1] or ctx.sender[0])},
            **facts,
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        return encounter

    @staticmethod
    def _account_to_move(message: Message, ctx: MapContext) -> dict[str, Any] | None:
        """PAM-FR's A44 has no PV1 (structure ADT_A43: MSH EVN PID PD1 MRG): MRG-3, else PID-18, names
        the account whose stays move. With a PV1, the visit it names moves (None here)."""
        if message.segment("PV1") is not None:
            return None
        for segment, position in (("MRG", 3), ("PID", 18)):
            found = message.segment(segment)
            rep = found.first(position) if found is not None else None
            if rep is not None and rep.get(1).strip() and rep.component_raw(1) != HL7_NULL:
                ctx.location = f"{segment}-{position}"
                return account_identifier(rep, ctx)
        raise MappingError("A44 without PV1: MRG-3 or PID-18 must name the account to move", location="MRG-3")

    @staticmethod
    def _account_as_visit(message: Message, ctx: MapContext) -> dict[str, Any] | None:
        """Without PV1-19, the account number (PID-18, NDA) identifies the stay: many non-French feeds
        leave PV1-19 empty and key visits on the account. Said in the ACK as a warning."""
        account = account_of(message, ctx)
        if account is not None:
            ctx.location = "PV1-19"
            ctx.warn("PV1-19 is empty: the account number (PID-18) identifies the stay")
        return account

    @staticmethod
    def _event_time(message: Message, movement: dict[str, Any] | None, header: Header) -> datetime:
        """When the event happened: ZBE-2, else EVN-6, else EVN-2, else MSH-7 (the state sorts on it)."""
        if movement and movement.get("date"):
            return instant(str(movement["date"]))
        evn = message.segment("EVN")
        for text in (evn.get(6), evn.get(2)) if evn is not None else ():
            parsed = parse_dtm(text) if text else None
            if parsed:
                return parsed[0]
        return header.sent_at or datetime(1970, 1, 1, tzinfo=UTC)


def _recorded_at(message: Message, header: Header) -> datetime | None:
    """When the sender recorded the event (EVN-2, else MSH-7): it orders corrections of one movement."""
    evn = message.segment("EVN")
    parsed = parse_dtm(evn.get(2)) if evn is not None and evn.get(2) else None
    return parsed[0] if parsed else header.sent_at


#: Ends from this year on mean "no end": GAMs send 20991231235959 (or 2999…, 9999…) for members whose
#: participation lasts as long as the stay.
FAR_FUTURE_YEAR = "2090"
#: Care circle roles about the patient, not a stay: the médecin traitant and his stand-in stay open.
PATIENT_ROLES = frozenset({"ODRP", "SUBS", "PP"})


def bind_to_stay(participations: list[dict[str, Any]], *, stay_id: str) -> None:
    """A ROL sent with a visit and a far-future end is a stay-bound member: no end of its own, it ends
    with the stay (``stay``); a patient-level role (``PATIENT_ROLES``) just has no end."""
    for statement in participations:
        end = str(statement.get("end") or "")
        if end[:4] < FAR_FUTURE_YEAR:
            continue
        del statement["end"]
        if statement["role"] not in PATIENT_ROLES:
            statement["stay"] = stay_id


def account_identifier(rep: Repetition, ctx: MapContext) -> dict[str, Any] | None:
    """An account number (NDA: PID-18, MRG-3) as the stay identifier it stands for (typed AN)."""
    ident: dict[str, Any] | None = TRANSFORMS["identifier_cx"](
        rep, ctx, {"default_type": "AN", "fallback_authority": "sender"}
    )
    return ident


def account_of(message: Message, ctx: MapContext) -> dict[str, Any] | None:
    """PID-18 as an account identifier (None when empty or HL7 null)."""
    pid = message.segment("PID")
    rep = pid.first(18) if pid is not None else None
    if rep is None or not rep.get(1).strip() or rep.component_raw(1) == HL7_NULL:
        return None
    return account_identifier(rep, ctx)


def identity_reliability(pid: Segment, zfd: Segment | None, *, tz: Any = PARIS) -> list[dict[str, Any]]:
    """PID-32 as FR Core 2.1.0's identity-reliability extension, coded from ``fr-core-cs-v2-0445`` (the
    published code system FR Core 2.1.0 binds, whose codes are PAM-FR's own: VALI, PROV, DOUT, HOMA…).

    The identity's status (VALI, else PROV, else the first code) carries, when the message says them, the
    validation mode (ZFD-7, the identity document: CN, PA…, ``fr-core-cs-mode-validation-identity``) and
    date (ZFD-6, the INSi check). Each further PID-32 attribute (DOUT, FICT, HOMA…) is one more extension
    (the slice repeats; ``identityStatus`` does not).
    """
    codes = list(dict.fromkeys(rep.get(1).strip().upper() for rep in pid.repetitions(32) if rep.get(1).strip()))
    if not codes:
        return []
    main = next((c for c in ("VALI", "PROV") if c in codes), codes[0])
    parts: list[dict[str, Any]] = [{"url": "identityStatus", "valueCoding": _reliability_coding(main)}]
    mode = zfd.get(7).strip().upper() if zfd else ""
    if mode in VALIDATION_MODES:
        parts.append({"url": "validationMode", "valueCoding": {"system": VALIDATION_MODE_SYSTEM, "code": mode}})
    checked = parse_dtm(zfd.get(6), tz) if zfd else None
    if checked:
        parts.append({"url": "validationDate", "valueDate": checked[0].date().isoformat()})
    out = [{"url": IDENTITY_RELIABILITY, "extension": parts}]
    out += [
        {"url": IDENTITY_RELIABILITY, "extension": [{"url": "identityStatus", "valueCoding": _reliability_coding(c)}]}
        for c in codes
        if c != main
    ]
    return out


def is_patient_ins(patient: dict[str, Any]) -> bool:
    """Whether a Patient with a qualified INS has what fr-core-patient-ins requires besides it."""
    official = [n for n in patient.get("name", []) if n.get("use") == "official"]
    birth_place = any(e.get("url") == BIRTH_PLACE for e in patient.get("extension", []))
    return (
        len(official) == 1
        and bool(official[0].get("family"))
        and len(official[0].get("given", [])) == 1
        and any(e.get("url") == BIRTH_LIST_GIVEN_NAME for e in official[0].get("extension", []))
        and patient.get("gender") in ("male", "female", "unknown")
        and "birthDate" in patient
        and birth_place
    )


def _reliability_coding(code: str) -> dict[str, str]:
    return {"system": IDENTITY_STATUS_SYSTEM, "code": code}


def instant(value: str) -> datetime:
    """A FHIR date or dateTime string as an aware datetime (French local time when it has no zone)."""
    padded = {4: f"{value}-01-01", 7: f"{value}-01"}.get(len(value), value)
    moment = datetime.fromisoformat(padded)
    return moment if moment.tzinfo else moment.replace(tzinfo=PARIS)


#: One compiled rule: field number, transform, its arguments, the target's steps (:func:`_path_parts`),
#: whether it repeats, whether it reads people (``PERSON_TRANSFORMS``), and the location warnings name.
Plan = tuple[tuple[int, Transform, dict[str, Any], tuple[tuple[str, bool, bool], ...], bool, bool, str], ...]


def compile_rules(seg_map: SegmentMap) -> Plan:
    """A segment map's rules as plain tuples, resolved once when the engine is built: the transform
    looked up, the target path split, the location formatted (not per rule of every message)."""
    return tuple(
        (
            rule.source.field,
            TRANSFORMS[rule.transform],
            rule.args,
            _path_parts(rule.target),
            rule.repeat,
            rule.transform in PERSON_TRANSFORMS,
            rule.location,
        )
        for rule in seg_map.rules
    )


def _path_parts(path: str) -> tuple[tuple[str, bool, bool], ...]:
    """``a.b[]`` as (name, appends, is last) steps."""
    parts = path.split(".")
    return tuple(
        (part.removesuffix("[]"), part.endswith("[]"), index == len(parts) - 1) for index, part in enumerate(parts)
    )


def set_path(target: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b[]``-style paths: ``[]`` appends to a list (skipping exact duplicates)."""
    _set_steps(target, _path_parts(path), value)


def _set_steps(target: dict[str, Any], steps: tuple[tuple[str, bool, bool], ...], value: Any) -> None:
    node: Any = target
    for name, append, last in steps:
        if append:
            items = node.setdefault(name, [])
            if last:
                if value not in items:
                    items.append(value)
                return
            items.append({})
            node = items[-1]
        elif last:
            node[name] = value
        else:
            node = node.setdefault(name, {})


def type_code(identifier: dict[str, Any]) -> str:
    codings = identifier.get("type", {}).get("coding") or [{}]
    return str(codings[0].get("code", ""))


def filter_identifiers(
    identifiers: list[dict[str, Any]], *, reliability: frozenset[str], ctx: MapContext
) -> list[dict[str, Any]]:
    """The identifiers a receiver may trust (PAM-FR §6.6.1).

    An INS is kept only when PID-32 says VALI (in any repetition: the status and its attributes repeat),
    and is typed by its authority OID, so that test and demo INS never pass for production ones. The
    billing NIR (CX-5 NH) is never kept: it is not an identity.
    """
    kept = []
    for ident in identifiers:
        code = type_code(ident)
        if code == "NH":
            continue
        if code == "INS-C" or ident.get("system") == INS_C_SYSTEM:
            ctx.location = "PID-3"
            ctx.warn("INS-C (deprecated since the INS-NIR) is not kept")
            continue
        if code in INS_TYPES:
            ctx.location = "PID-32"
            if "VALI" not in reliability:
                ctx.warn("INS received without a VALI identity status: dropped")
                continue
            row = ctx.tables.code(INS_TABLE, str(ident.get("system", "")).removeprefix("urn:oid:"))
            if row is None:
                ctx.location = "PID-3"
                ctx.warn("INS under an authority that is not an INS OID: dropped")
                continue
            kept.append({"use": "official", **ident, "type": {"coding": [row.coding()]}})
            continue
        kept.append({"use": "usual", **ident} if code == "PI" else ident)
    return kept


def _people(reps: Sequence[Repetition]) -> list[list[Repetition]]:
    """XCN repetitions grouped by person: GAMs send one doctor as ``ADELI~RPPS`` with the same name
    (XCN-2/3). Repetitions without a name stand alone."""
    if len(reps) == 1:
        return [[reps[0]]]  # one repetition is one person: no names to compare
    groups: dict[tuple[str, str] | int, list[Repetition]] = {}
    for index, rep in enumerate(reps):
        family, given = rep.get(2, 1).strip().upper(), rep.get(3).strip().upper()
        groups.setdefault((family, given) if family else index, []).append(rep)
    return list(groups.values())


def patient_key(identifiers: list[dict[str, Any]]) -> str | None:
    """The patient's identity in the sender's domain: the first IPP (PI), else the first non-INS id."""
    for wanted in ("PI", None):
        for ident in identifiers:
            code = type_code(ident)
            if (wanted and code == wanted) or (wanted is None and code not in INS_TYPES):
                return f"{ident['system']}|{ident['value']}"
    return None
