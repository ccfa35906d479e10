"""The pure mapping engine: a parsed ADT message + the tables → the facts the state engine applies.

No I/O, no SQL, no web framework: the same message and tables always give the same output, which is
what makes golden files, ``gateway convert`` and the sandbox trustworthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import MappingError, UnsupportedError, UnsupportedEventError
from gateway.hl7.er7 import Message, Segment
from gateway.mapping.ids import resource_id
from gateway.mapping.tables import ACTIONS, EventSpec, SegmentMap, Tables, load_tables
from gateway.mapping.transforms import PARIS, TRANSFORMS, MapContext, parse_dtm

FR_CORE = "https://hl7.fr/ig/fhir/core/StructureDefinition"
PROFILE_PATIENT = f"{FR_CORE}/fr-core-patient"
PROFILE_PATIENT_INS = f"{FR_CORE}/fr-core-patient-ins"
PROFILE_ENCOUNTER = f"{FR_CORE}/fr-core-encounter"
PROFILE_PRACTITIONER = f"{FR_CORE}/fr-core-practitioner"
#: Identifier types that mean "an INS" (CX-5 INS maps to INS-NIR; the authority table then decides).
INS_TYPES = frozenset({"INS", "INS-NIR", "INS-NIA", "INS-C", "INS-NIR-TEST", "INS-NIR-DEMO"})
#: The INS kinds that make a production, qualified identity (fr-core-patient-ins).
PRODUCTION_INS = frozenset({"INS-NIR", "INS-NIA"})
INS_TABLE = "InsAuthority_to_IdentifierType"


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


class Engine:
    """Holds the validated tables; :meth:`map` is the pure conversion."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    @classmethod
    def from_directory(cls, directory: Path) -> Engine:
        return cls(load_tables(directory, transforms=frozenset(TRANSFORMS)))

    def map(self, message: Message) -> Mapped:
        header = read_header(message)
        event = self._route(header)
        ctx = MapContext(tables=self.tables, sender=header.sender)
        ctx.warnings.extend(("MSH", w) for w in message.warnings)
        self._check_evn(message, header, ctx)
        patient = self._patient(message, ctx)
        movement = self._movement(message, ctx)
        encounter = self._encounter(message, ctx, patient_id=patient["id"])
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

    # -- segments -------------------------------------------------------------------------------

    def _apply(self, seg_map: SegmentMap, segment: Segment, ctx: MapContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rule in seg_map.rules:
            ctx.location = str(rule.source)
            reps = segment.repetitions(rule.source.field)
            for rep in reps if rule.repeat else reps[:1]:
                value = TRANSFORMS[rule.transform](rep, ctx, rule.args)
                if value is not None:
                    set_path(out, rule.target, value)
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
        has_ins = any(type_code(i) in PRODUCTION_INS for i in identifiers)
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": resource_id("Patient", key),
            "meta": {"profile": [PROFILE_PATIENT_INS if has_ins else PROFILE_PATIENT]},
            **facts,
            "identifier": identifiers,
        }
        return patient

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
        return movement or None

    def _encounter(self, message: Message, ctx: MapContext, *, patient_id: str) -> dict[str, Any] | None:
        pv1 = message.segment("PV1")
        if pv1 is None:
            raise MappingError("PV1 segment is missing", location="PV1")
        facts = self._apply(self.tables.segments[self.tables.event_segments["encounter"]], pv1, ctx)
        visit = next((i for i in facts.get("identifier", []) if type_code(i) == "VN"), None)
        if visit is None:
            raise MappingError("PV1-19 (visit number) is empty: the stay cannot be identified", location="PV1-19")
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": resource_id("Encounter", f"{visit['system']}|{visit['value']}"),
            "meta": {"profile": [PROFILE_ENCOUNTER]},
            **facts,
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        return encounter

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


def instant(value: str) -> datetime:
    """A FHIR date or dateTime string as an aware datetime (French local time when it has no zone)."""
    padded = {4: f"{value}-01-01", 7: f"{value}-01"}.get(len(value), value)
    moment = datetime.fromisoformat(padded)
    return moment if moment.tzinfo else moment.replace(tzinfo=PARIS)


def set_path(target: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b[]``-style paths: ``[]`` appends to a list (skipping exact duplicates)."""
    parts = path.split(".")
    node: Any = target
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        append = part.endswith("[]")
        name = part[:-2] if append else part
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
            kept.append({**ident, "type": {"coding": [row.coding()]}})
            continue
        kept.append(ident)
    return kept


def patient_key(identifiers: list[dict[str, Any]]) -> str | None:
    """The patient's identity in the sender's domain: the first IPP (PI), else the first non-INS id."""
    for wanted in ("PI", None):
        for ident in identifiers:
            code = type_code(ident)
            if (wanted and code == wanted) or (wanted is None and code not in INS_TYPES):
                return f"{ident['system']}|{ident['value']}"
    return None
