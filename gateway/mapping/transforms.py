"""The transforms mapping tables may name: HL7 v2 data types (CX, XPN, XCN, PL, XON, DTM…) → FHIR dicts.

Each transform takes one field repetition and the mapping context and returns a value or ``None``
(nothing to map). They are pure: no I/O, and the same input always gives the same output.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from gateway.canonical import CANONICAL_BASE, FR_CORE_SD
from gateway.hl7.er7 import Repetition
from gateway.mapping.ids import (
    ADELI_SYSTEM,
    MEMO_LONGEST,
    NATIONAL_PS,
    PS_OID,
    RPPS_SYSTEM,
    national_ps,
    resource_id,
)
from gateway.mapping.tables import Tables

PARIS = ZoneInfo("Europe/Paris")
#: Years a DTM may carry. Outside this range a time cannot be moved to UTC or compared safely (year 1
#: shifted by an offset leaves ``datetime``'s range): such values are garbage, read as "not a date".
MIN_YEAR, MAX_YEAR = 1000, 9998
#: UTC offsets exist from -12:00 to +14:00; HL7 allows any ``+HHMM``, ``datetime`` only under 24 h.
MAX_OFFSET = timedelta(hours=14)
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")
#: Transforms that read a person (XCN): repetitions with the same name are one person (``ADELI~RPPS``).
PERSON_TRANSFORMS = frozenset({"participant_xcn", "practitioner_ref_xcn"})
#: Systems the gateway mints where HL7 gives only a local namespace (valid URIs, stable across messages).
LOCAL_SID = f"{CANONICAL_BASE}/sid"
PROFILE_PRACTITIONER = f"{FR_CORE_SD}/fr-core-practitioner"
BIRTH_LIST_GIVEN_NAME = f"{FR_CORE_SD}/fr-core-patient-birth-list-given-name"
INSEE_CODE = f"{FR_CORE_SD}/fr-core-address-insee-code"
INSEE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"


@dataclass(slots=True)
class MapContext:
    """What a transform may read besides its field: the tables and the sender; and where it reports."""

    tables: Tables
    sender: tuple[str, str]
    tz: ZoneInfo = PARIS
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (location, text)
    practitioners: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: establishments a message names (PV1-37 discharge destination), to be written with it
    organizations: dict[str, dict[str, Any]] = field(default_factory=dict)
    location: str = ""
    #: the other repetitions of the person a transform is reading (same name: ``ADELI~RPPS``)
    same_person: list[Repetition] = field(default_factory=list)
    #: what pure steps made from the same text before (the engine's, shared by its messages: see
    #: :func:`practitioner_from_xcn`); each entry is immutable, and handed out as a new copy
    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def warn(self, text: str) -> None:
        self.warnings.append((self.location, text))


Transform = Callable[[Repetition, MapContext, dict[str, Any]], Any]
TRANSFORMS: dict[str, Transform] = {}


def transform(name: str) -> Callable[[Transform], Transform]:
    def register(fn: Transform) -> Transform:
        TRANSFORMS[name] = fn
        return fn

    return register


# -- dates ------------------------------------------------------------------------------------


def parse_dtm(text: str, tz: ZoneInfo = PARIS) -> tuple[datetime, int] | None:
    """HL7 DTM → (aware datetime, precision in characters), or ``None``: see :func:`_parse_dtm`."""
    return _parse_dtm(text, tz) if len(text) > MEMO_LONGEST else _known_dtm(text, tz)


def _parse_dtm(text: str, tz: ZoneInfo) -> tuple[datetime, int] | None:
    """HL7 DTM → (aware datetime, precision in characters). Naive times are French local time.

    Anything that is not a real instant (month 13, offset +2400, year 0001…) gives ``None``, never an
    exception: a date is data from the sender, and a bad one must not stop the feed.
    """
    match = _DTM.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, _frac, offset = match.groups()
    if not MIN_YEAR <= int(year) <= MAX_YEAR:
        return None
    try:
        moment = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        return None
    zone = _offset_zone(offset) if offset else tz
    if zone is None:
        return None
    precision = len("".join(g for g in (year, month, day, hour, minute, second) if g))
    return moment.replace(tzinfo=zone), precision


#: a message gives the same instant in MSH-7, EVN-2, PV1-44 and ZBE-2 (the result is immutable)
_known_dtm = lru_cache(maxsize=256)(_parse_dtm)


def _offset_zone(offset: str) -> timezone | None:
    """``+HHMM`` / ``-HHMM`` → a fixed zone; ``None`` for minutes over 59 or an offset no place uses."""
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    delta = timedelta(hours=hours, minutes=minutes)
    if minutes > 59 or delta > MAX_OFFSET:
        return None
    return timezone(delta if offset[0] == "+" else -delta)


def fhir_datetime(text: str, tz: ZoneInfo = PARIS) -> str | None:
    """HL7 DTM → FHIR date or dateTime text at the DTM's precision (``None``: not an instant)."""
    return _fhir_datetime(text, tz) if len(text) > MEMO_LONGEST else _known_fhir_datetime(text, tz)


def _fhir_datetime(text: str, tz: ZoneInfo) -> str | None:
    parsed = _parse_dtm(text, tz)
    if parsed is None:
        return None
    moment, precision = parsed
    if precision <= 4:
        return moment.strftime("%Y")
    if precision <= 6:
        return moment.strftime("%Y-%m")
    if precision <= 8:
        return moment.strftime("%Y-%m-%d")
    return moment.isoformat(timespec="seconds")


#: a message gives the same instant in MSH-7, EVN-2, EVN-6, PV1-44 and ZBE-2: formatted once (text is immutable)
_known_fhir_datetime = lru_cache(maxsize=256)(_fhir_datetime)


@transform("datetime")
def _datetime(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> str | None:
    text = rep.get(1)
    if not text:
        return None
    value = fhir_datetime(text, ctx.tz)
    if value is None:
        ctx.warn(f"not a valid date/time: {len(text)} characters ignored")
    return value


@transform("date")
def _date(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> str | None:
    value = _datetime(rep, ctx, args)
    return value[:10] if value else None


# -- simple values ----------------------------------------------------------------------------


@transform("string")
def _string(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> str | None:
    return rep.get(int(args.get("component", 1))).strip() or None


@transform("yes_no")
def _yes_no(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> bool | None:
    value = rep.get(1).strip().upper()
    return {"Y": True, "N": False}.get(value)


@transform("code")
def _code(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> str | None:
    value = rep.get(1).strip()
    if not value:
        return None
    row = ctx.tables.code(args["table"], value)
    if row is None:
        ctx.warn(f"code {value!r} is not in table {args['table']}")
        return args.get("default")
    return row.target_code


@transform("coding")
def _coding(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, str] | None:
    value = rep.get(1).strip()
    if not value:
        return None
    row = ctx.tables.code(args["table"], value)
    if row is None:
        ctx.warn(f"code {value!r} is not in table {args['table']}")
        return None
    return row.coding()


@transform("codeable_concept")
def _codeable_concept(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    coding = _coding(rep, ctx, args)
    return {"coding": [coding]} if coding else None


# -- identifiers ------------------------------------------------------------------------------


def identifier_type(ctx: MapContext, code: str) -> dict[str, Any] | None:
    row = ctx.tables.code("IdentifierType", code) if code else None
    return {"coding": [row.coding()]} if row else None


def authority_system(ctx: MapContext, *, namespace: str, universal_id: str, fallback: str = "") -> str:
    """Resolve an assigning authority to a FHIR system, minting a stable one when no table knows it."""
    system = ctx.tables.authorities.system_for(namespace=namespace, universal_id=universal_id, sender=ctx.sender)
    if system:
        return system
    name = namespace or universal_id or fallback or ctx.sender[1] or ctx.sender[0]
    ctx.warn("assigning authority not in the authorities table; a local system was minted")
    return local_system("authority", ctx.sender[1] or ctx.sender[0], name)


def local_system(kind: str, *parts: str) -> str:
    """A gateway-minted identifier system, e.g. ``…/sid/uf/1.2.250.1.999.1.1`` for a facility's UF codes."""
    if sum(map(len, parts)) > MEMO_LONGEST:
        return _local_system(kind, *parts)
    return _known_system(kind, *parts)


def _local_system(kind: str, *parts: str) -> str:
    return "/".join([LOCAL_SID, kind, *(_slug(p) for p in parts)])


#: a sender's few facilities and units, asked for several times a message (``_slug`` is a regex)
_known_system = lru_cache(maxsize=512)(_local_system)


def _authority_key(namespace: str, universal_id: str, ctx: MapContext) -> str:
    return universal_id or namespace or ctx.sender[1] or ctx.sender[0]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "unknown"


@transform("identifier_cx")
def _identifier_cx(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    """CX → Identifier. With no CX-4, the sender facility stands in (two facilities never share a visit)."""
    value = rep.get(1).strip()
    if not value:
        return None
    namespace, universal_id = rep.get(4, 1).strip(), rep.get(4, 2).strip()
    if not namespace and not universal_id and args.get("fallback_authority") == "sender":
        namespace = ctx.sender[1] or ctx.sender[0]
    system = authority_system(ctx, namespace=namespace, universal_id=universal_id)
    type_code = rep.get(5).strip() or str(args.get("default_type", ""))
    out: dict[str, Any] = {"system": system, "value": value}
    kind = identifier_type(ctx, type_code)
    if kind:
        out = {"type": kind, **out}
    elif type_code:
        out = {"type": {"text": type_code}, **out}
    return out


@transform("identifier_ei")
def _identifier_ei(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    """EI (entity id, namespace, universal id) → Identifier, as for ZBE-1 movement ids."""
    value = rep.get(1).strip()
    if not value:
        return None
    system = authority_system(ctx, namespace=rep.get(2).strip(), universal_id=rep.get(3).strip())
    out: dict[str, Any] = {"system": system, "value": value}
    kind = identifier_type(ctx, str(args.get("default_type", "")))
    return {"type": kind, **out} if kind else out


# -- people, places, units --------------------------------------------------------------------


@transform("human_name_xpn")
def _human_name(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    family, given, middle = rep.get(1, 1).strip(), rep.get(2).strip(), rep.get(3).strip()
    if not family and not given:
        return None
    out: dict[str, Any] = {}
    use = {
        "L": "official",
        "D": "usual",
        "M": "maiden",
        "N": "nickname",
        "A": "anonymous",
        "S": "anonymous",
    }.get(rep.get(7).strip())
    if use:
        out["use"] = use
    if family:
        out["family"] = family
    # PAM-FR: XPN-2 is the first given name, XPN-3 the full list of given names, space separated.
    # XPN-3 repeats XPN-2 as its first word(s) in PAM-FR, not in foreign feeds ("DOE^JEAN^JEANNETTE").
    repeats_first = middle == given or middle.startswith(f"{given} ")
    givens = middle.split() if repeats_first else [g for g in [given, *middle.split()] if g]
    if use == "official" and given and middle:
        # FR Core: the official (birth) name has one first given name; the birth list of given names
        # (XPN-3) goes in its extension.
        out["extension"] = [
            {"url": BIRTH_LIST_GIVEN_NAME, "valueString": middle if repeats_first else f"{given} {middle}"}
        ]
        givens = [given]
    if givens:
        out["given"] = givens
    prefix = rep.get(5).strip()
    if prefix:
        out["prefix"] = [prefix]
    return out


@transform("address_xad")
def _address(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    line = [p for p in (rep.get(1, 1).strip(), rep.get(2).strip()) if p]
    out: dict[str, Any] = {}
    if line:
        out["line"] = line
    for key, comp in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6)):
        value = rep.get(comp).strip()
        if value:
            out[key] = value
    kind = rep.get(7).strip()
    if kind == "BDL":  # PAM-FR: birth place, carried by the birthPlace extension (birth_place_xad), not an address
        return None
    use = {"H": "home", "O": "work", "C": "temp", "B": "work"}.get(kind)
    if use and out:
        out["use"] = use
    return out or None


@transform("birth_place_xad")
def _birth_place(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    """PID-11 of type BDL (PAM-FR: the birth place, INSEE code of the commune in XAD-9) → the core
    ``patient-birthPlace`` extension with FR Core's address INSEE code extension."""
    if rep.get(7).strip() != "BDL":
        return None
    address: dict[str, Any] = {}
    insee = rep.get(9).strip()
    if insee:
        address["extension"] = [{"url": INSEE_CODE, "valueCoding": {"system": INSEE_SYSTEM, "code": insee}}]
    for key, comp in (("city", 3), ("postalCode", 5), ("country", 6)):
        if rep.get(comp).strip():
            address[key] = rep.get(comp).strip()
    return {"url": BIRTH_PLACE, "valueAddress": address} if address else None


@transform("telecom_xtn")
def _telecom(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    value = rep.get(1).strip() or rep.get(4).strip() or rep.get(12).strip()
    if not value:
        return None
    system = "email" if "@" in value or rep.get(3).strip() == "Internet" else "phone"
    out = {"system": system, "value": value}
    if rep.get(3).strip().upper() == "CP":  # XTN-3 CP: a cellular phone
        out["use"] = "mobile"
    elif args.get("use"):
        out["use"] = str(args["use"])
    return out


#: Entries the memo holds at most; it starts again empty beyond (a feed names a few hundred doctors).
MEMO_ENTRIES = 4096


def practitioner_from_xcn(rep: Repetition, ctx: MapContext) -> tuple[str, dict[str, Any]] | None:
    """XCN → a Practitioner (fr-core-practitioner) keyed by RPPS when given, else ADELI, else the sender's
    local id. The same person sent as several repetitions (``ADELI~RPPS``, same name) is one Practitioner
    with every identifier: the engine passes the other repetitions in ``ctx.same_person``.

    The same doctors come back in every message (PV1-7, PV1-17, ROL-4, PD1-4): what their text makes (the
    resource, and the warnings said while making it) is kept in ``ctx.memo``, by the text, the delimiters
    and the sender, and each use gets a new copy of the resource and the warnings at its own location.
    """
    texts = [rep.raw, *(one.raw for one in ctx.same_person)]
    key = ("xcn", rep.encoding, ctx.sender, *texts) if sum(map(len, texts)) <= MEMO_LONGEST else None
    made = ctx.memo.get(key) if key is not None else None
    if made is None:
        reported = len(ctx.warnings)
        found = _practitioner(rep, ctx)
        if key is not None:
            if len(ctx.memo) >= MEMO_ENTRIES:
                ctx.memo.clear()
            said = tuple(text for _, text in ctx.warnings[reported:])
            ctx.memo[key] = (found[0], orjson.dumps(found[1]), said) if found else (None, b"", said)
        if found is None:
            return None
        pid, resource = found
    else:
        pid, body, said = made
        ctx.warnings.extend((ctx.location, text) for text in said)
        if pid is None:
            return None
        resource = orjson.loads(body)
    known = ctx.practitioners.get(pid)
    if known is not None:  # named twice in one message (PV1-7 and ROL-4): keep every identifier
        identifiers = resource.get("identifier", [])
        extra = [i for i in known.get("identifier", []) if i not in identifiers]
        if extra:
            resource["identifier"] = _one_national_id([*identifiers, *extra])
    ctx.practitioners[pid] = resource
    return pid, resource


def _practitioner(rep: Repetition, ctx: MapContext) -> tuple[str, dict[str, Any]] | None:
    """The Practitioner one XCN (and the same person's other repetitions) makes, alone."""
    reps = [rep, *ctx.same_person]
    family, given = rep.get(2, 1).strip(), rep.get(3).strip()
    identifiers: list[dict[str, Any]] = []
    for one in reps:
        for ident in _xcn_identifiers(one, ctx):
            if ident not in identifiers:
                identifiers.append(ident)
    if not identifiers and not family:
        return None
    identifiers = _one_national_id(identifiers)
    key = _practitioner_key(identifiers) or f"name|{ctx.sender[1]}|{family}|{given}"
    pid = resource_id("Practitioner", key)
    resource: dict[str, Any] = {"resourceType": "Practitioner", "id": pid, "meta": {"profile": [PROFILE_PRACTITIONER]}}
    if identifiers:
        resource["identifier"] = identifiers
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = [given]
    if rep.get(6).strip():  # XCN-6 is the civility of exercise (DR, PR): FR Core puts it in suffix
        name["suffix"] = [rep.get(6).strip()]
    if name:
        resource["name"] = [name]
    return pid, resource


def _xcn_identifiers(rep: Repetition, ctx: MapContext) -> list[dict[str, Any]]:
    """One XCN's identifier(s): a national id in FR Core's two forms (RPPS / ADELI under its own system,
    and the prefixed idNatPs under the PS OID); any other id under its authority's system."""
    value = rep.get(1).strip()
    if not value:
        return []
    namespace, universal_id = rep.get(9, 1).strip(), rep.get(9, 2).strip()
    system = authority_system(ctx, namespace=namespace, universal_id=universal_id, fallback="practitioner")
    type_code = rep.get(13).strip().upper()
    national = national_ps(system, value, type_code)
    if national is None:
        identifier: dict[str, Any] = {"system": system, "value": value}
        kind = identifier_type(ctx, type_code)
        return [{"type": kind, **identifier} if kind else identifier]
    national_system, number = national
    code, prefix = NATIONAL_PS[national_system]
    out = []
    for id_system, id_value, id_code in ((national_system, number, code), (PS_OID, f"{prefix}{number}", "IDNPS")):
        kind = identifier_type(ctx, id_code)
        ident = {"system": id_system, "value": id_value}
        out.append({"type": kind, **ident} if kind else ident)
    return out


def _one_national_id(identifiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RPPS first (what platforms search by), then ADELI, then local ids; one idNatPs (FR Core: 0..1),
    the one of the first national id."""
    rank = {RPPS_SYSTEM: 0, ADELI_SYSTEM: 1, PS_OID: 2}
    ordered = sorted(identifiers, key=lambda i: rank.get(i["system"], 3))
    first = next((i for i in ordered if i["system"] in NATIONAL_PS), None)
    wanted = f"{NATIONAL_PS[first['system']][1]}{first['value']}" if first else None
    return [i for i in ordered if i["system"] != PS_OID or i["value"] == wanted]


def _practitioner_key(identifiers: list[dict[str, Any]]) -> str | None:
    """RPPS first, then ADELI, then the first local id: one resource per person."""
    for wanted in (RPPS_SYSTEM, ADELI_SYSTEM):
        for ident in identifiers:
            if ident["system"] == wanted:
                return f"{wanted}|{ident['value']}"
    locals_ = [i for i in identifiers if i["system"] != PS_OID]
    return f"{locals_[0]['system']}|{locals_[0]['value']}" if locals_ else None


@transform("practitioner_ref_xcn")
def _practitioner_ref(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    """XCN → a Reference to the Practitioner (registered for writing), with the name as display."""
    found = practitioner_from_xcn(rep, ctx)
    if found is None:
        return None
    return practitioner_reference(*found)


def practitioner_reference(pid: str, resource: dict[str, Any]) -> dict[str, Any]:
    """A Reference with the id, the national or local identifier (searchable) and the name as display."""
    ref: dict[str, Any] = {"reference": f"Practitioner/{pid}"}
    if resource.get("identifier"):
        ref["identifier"] = resource["identifier"][0]  # RPPS (or ADELI) first: what platforms search by
    names = resource.get("name")
    if names:
        ref["display"] = " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip()
    return ref


@transform("participant_xcn")
def _participant(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    found = practitioner_from_xcn(rep, ctx)
    if found is None:
        return None
    row = ctx.tables.code("ParticipationType", str(args["type"]))
    out: dict[str, Any] = {"individual": practitioner_reference(*found)}
    if row:
        out = {"type": [{"coding": [row.coding()]}], **out}
    return out


FINESS_SYSTEM = "https://finess.esante.gouv.fr"
PROFILE_ORGANIZATION = f"{FR_CORE_SD}/fr-core-organization"
FINESS = re.compile(r"[0-9][0-9AB][0-9]{7}")


@transform("finess_organization_dld")
def _finess_destination(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    """PV1-37 (DLD-1, PAM-FR: the FINESS of the establishment the patient leaves for) → a Reference to
    that establishment as an Organization (fr-core-organization, FINESS identifier), written with the
    message. Anything but a FINESS is warned about and left out."""
    code = rep.get(1).strip().upper()
    if not code:
        return None
    if not FINESS.fullmatch(code):
        ctx.warn(f"discharge destination {code!r} is not a FINESS number; ignored")
        return None
    identifier = {"system": FINESS_SYSTEM, "value": code}
    kind = identifier_type(ctx, "FINEG")
    oid = resource_id("Organization", f"{FINESS_SYSTEM}|{code}")
    ctx.organizations[oid] = {
        "resourceType": "Organization",
        "id": oid,
        "meta": {"profile": [PROFILE_ORGANIZATION]},
        "identifier": [{"type": kind, **identifier} if kind else identifier],
    }
    return {"reference": f"Organization/{oid}", "identifier": identifier}


@transform("location_pl")
def _location(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    """PL → Encounter.location (logical reference: UF d'hébergement, room, bed as display and identifier)."""
    unit, room, bed = rep.get(1).strip(), rep.get(2).strip(), rep.get(3).strip()
    if not (unit or room or bed):
        return None
    parts = [p for p in (unit, room, bed) if p]
    system = local_system("location", _authority_key(rep.get(4, 1).strip(), rep.get(4, 2).strip(), ctx))
    return {
        "location": {
            "identifier": {"system": system, "value": "/".join(parts)},
            "display": " ".join(parts),
        },
        "status": "active",
    }


@transform("unit_xon")
def _unit(rep: Repetition, ctx: MapContext, args: dict[str, Any]) -> dict[str, Any] | None:
    """XON with 7 = UF and 10 = the UF code (ZBE-7/8) → {code, name, system}."""
    code = rep.get(10).strip() or rep.get(3).strip()
    name = rep.get(1).strip()
    if not code and not name:
        return None
    # One UF, one identifier: the unit is numbered by the hospital whose GAM sends it (MSH-4), whether or
    # not the sender fills XON-6, and whatever authority form XON-6 takes.
    system = local_system("uf", ctx.sender[1] or ctx.sender[0])
    out = {"system": system, "code": code or name}
    if name:
        out["name"] = name
    return out
