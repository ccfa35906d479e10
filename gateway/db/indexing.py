"""Search parameters extracted from each resource when it is written (pure; the repo stores them)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from gateway.canonical import CANONICAL_BASE
from gateway.mapping.directory import practitioner_of_role
from gateway.mapping.ids import MEMO_LONGEST, NATIONAL_LENGTH, NATIONAL_PS, national_ps, ps_identifier_forms

JSON = dict[str, Any]
Entry = tuple[str, str, str]  # (param, system, value)
#: Date parameters are indexed as fixed-width UTC text, so that comparing text compares instants.
INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
#: Index entries that are no search parameter of the CapabilityStatement (``gateway/fhir/capability.py``
#: declares those): sort keys, the period's end, and what the access policy and merges look up.
INDEX_ONLY: dict[str, frozenset[str]] = {
    "Encounter": frozenset({"date"}),  # _sort=date
    "CareTeam": frozenset({"date.end", "_platform-source"}),
    "Patient": frozenset({"link", "_security"}),
    "Subscription": frozenset({"criteria"}),
}
#: Parameters searched under another one's entries, which hold the same values: ``patient`` is the
#: ``subject`` of these types, and a circle's CDS ``start`` is its R4 ``date`` (both period.start). The
#: search reads the entries of the alias's target (``indexed_param``); one row instead of two.
ALIASES: dict[str, dict[str, str]] = {
    "Encounter": {"patient": "subject"},
    "CareTeam": {"patient": "subject", "start": "date"},
    "CommunicationRequest": {"patient": "subject"},
}
#: Parameters whose values are instants (fixed-width UTC text) or, for Encounter's ``date`` sort key,
#: the period's start as written: stored keyed by owner (``gateway/db/schema.py``), compared for a resource found.
DATE_PARAMS = frozenset({"date", "date.end", "start", "end", "participant-start", "participant-end"})
#: ``CareTeam?date=``: a period's end as the instant it stops covering; an open period never does.
PERIOD_END = "date.end"
OPEN_END = "9999-12-31T23:59:59.999999Z"
#: gateway/state/careteam.py's participant source extension (hospital:… or platform:<name>)
PARTICIPANT_SOURCE = f"{CANONICAL_BASE}/StructureDefinition/careteam-participant-source"


#: the width of the index's text columns: longer values are stored (and so compared) cut
WIDTH = 255
#: Systems the index stores under a two-character code (``~`` and a letter, in this order): the system
#: URLs and OID arcs that recur in most entries, 80 characters for an NdE event type. Frozen: a code's
#: meaning never changes once rows use it (new ones are appended), and they are literals, not derived
#: from ``CANONICAL_BASE``, so that a deployment changing its base keeps reading its rows. A system
#: stored so is written and searched through :func:`stored_system`, read back through
#: :func:`system_of`; no URI begins with ``~`` (RFC 3986: a scheme starts with a letter).
SYSTEM_CODES: tuple[str, ...] = (
    "https://mos.esante.gouv.fr/NOS/TRE_R254-TypeEvenement/FHIR/TRE-R254-TypeEvenement",
    "http://terminology.hl7.org/CodeSystem/",
    "urn:oid:1.2.250.1.71.4.2.1",  # idNatPs
    "urn:oid:1.2.250.1.213.1.4.",  # INS
    "urn:oid:1.2.250.1.",  # French health OIDs (the hospitals' authorities)
    "urn:oid:",
    "https://rpps.esante.gouv.fr",
    "https://gateway.e-parcours.example/fhir/sid/",
    "https://mos.esante.gouv.fr/NOS/",
)
SYSTEM_MARK = "~"
_LONGEST_FIRST = sorted(enumerate(SYSTEM_CODES), key=lambda c: -len(c[1]))


def stored_system(system: str) -> str:
    """A system as the index stores (and is searched for) it: its longest listed prefix as a code."""
    return _coded(system) if len(system) > MEMO_LONGEST else _known_coded(system)


def _coded(system: str) -> str:
    for code, prefix in _LONGEST_FIRST:
        if system.startswith(prefix):
            return f"{SYSTEM_MARK}{chr(ord('A') + code)}{system[len(prefix) :]}"
    return system


#: a few dozen systems recur in every message's ~50 entries, each walking the nine prefixes
_known_coded = lru_cache(maxsize=512)(_coded)


def system_of(stored: str) -> str:
    """The system an index row's ``system`` holds (the inverse of :func:`stored_system`)."""
    if stored.startswith(SYSTEM_MARK) and len(stored) >= 2:
        return SYSTEM_CODES[ord(stored[1]) - ord("A")] + stored[2:]
    return stored


#: (type, parameter) of every index entry as the smallint ``search_index.code`` stores, in place of two
#: text columns (a fifth of each row and of its key). Frozen like ``SYSTEM_CODES``: a code's meaning never
#: changes once rows use it, a new pair takes the next number, and tests/unit/test_search_params.py pins
#: the table and checks that every pair the extraction gives for a searchable type has one.
PARAM_CODES: dict[tuple[str, str], int] = {
    ("Patient", "identifier"): 1,
    ("Patient", "active"): 2,
    ("Patient", "link"): 3,
    ("Patient", "_security"): 4,
    ("Encounter", "identifier"): 5,
    ("Encounter", "subject"): 6,
    ("Encounter", "part-of"): 7,
    ("Encounter", "status"): 8,
    ("Encounter", "date"): 9,
    ("Encounter", "class"): 10,
    ("Practitioner", "identifier"): 11,
    ("PractitionerRole", "identifier"): 12,
    ("PractitionerRole", "practitioner"): 13,
    ("PractitionerRole", "organization"): 14,
    ("Organization", "identifier"): 15,
    ("Organization", "partof"): 16,
    ("CareTeam", "identifier"): 17,
    ("CareTeam", "subject"): 18,
    ("CareTeam", "participant"): 19,
    ("CareTeam", "_platform-source"): 20,
    ("CareTeam", "participant.identifier"): 21,
    ("CareTeam", "status"): 22,
    ("CareTeam", "date"): 23,
    ("CareTeam", "end"): 24,
    ("CareTeam", "date.end"): 25,
    ("CareTeam", "participant-start"): 26,
    ("CareTeam", "participant-end"): 27,
    ("CommunicationRequest", "identifier"): 28,
    ("CommunicationRequest", "subject"): 29,
    ("CommunicationRequest", "patient.identifier"): 30,
    ("CommunicationRequest", "event-type"): 31,
    ("CommunicationRequest", "encounter"): 32,
    ("CommunicationRequest", "status"): 33,
    ("Subscription", "identifier"): 34,
    ("Subscription", "status"): 35,
    ("Subscription", "criteria"): 36,
    ("Subscription", "url"): 37,
}
#: the code a search on a pair without one looks up: no row holds it, so it finds nothing
NO_CODE = 0


def param_code(rtype: str, param: str) -> int:
    """The ``search_index.code`` of (type, parameter), or :data:`NO_CODE`."""
    return PARAM_CODES.get((rtype, param), NO_CODE)


#: Resource types whose references the PostgreSQL index stores compactly (:func:`value_key`): a byte
#: 0x80 + position (a byte no UTF-8 text begins with), then the id's bytes. Frozen as the codes above.
REFERENCE_TYPES: tuple[str, ...] = (
    "Patient",
    "Encounter",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "CareTeam",
    "CommunicationRequest",
    "Subscription",
)
_REFERENCE_BYTE = {rtype: 0x80 + i for i, rtype in enumerate(REFERENCE_TYPES)}
#: the trailing byte of a stored id that is not hex but as long as one that is (no UTF-8 has it)
_NOT_HEX = b"\xff"
#: the byte lengths of ids stored as bytes: 32 hex digits (a deterministic id), and 32 + ``-`` + 16 (a
#: PractitionerRole's, ``gateway/mapping/directory.py``: its practitioner's and its structure's)
HEX_WIDTHS = (16, 24)


def _hex_id(rid: str) -> bytes | None:
    """The bytes of a deterministic id (32 lowercase hex digits, or those, ``-`` and 16 more), else None."""
    if len(rid) == 32:
        digits = rid
    elif len(rid) == 49 and rid[32] == "-":
        digits = rid[:32] + rid[33:]
    else:
        return None
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return raw if raw.hex() == digits else None


def id_key(rid: str) -> bytes:
    """A resource id as the PostgreSQL index stores it: 16 or 24 bytes for a deterministic one, otherwise
    its UTF-8 text, never of those lengths (``0xFF`` is appended to one that is): the two never meet."""
    raw = _hex_id(rid)
    if raw is not None:
        return raw
    text = rid.encode()
    return text + _NOT_HEX if len(text) in HEX_WIDTHS else text


def id_of(key: bytes) -> str:
    """The id :func:`id_key` stored."""
    if len(key) == 16:
        return key.hex()
    if len(key) == 24:
        return f"{key[:16].hex()}-{key[16:].hex()}"
    return (key[:-1] if key.endswith(_NOT_HEX) else key).decode()


def value_key(value: str) -> bytes:
    """An entry's value as the PostgreSQL index stores it: a reference to a deterministic id of a type of
    :data:`REFERENCE_TYPES` as its type's byte then the id's bytes (17 or 25), anything else as UTF-8 text."""
    rtype, slash, rid = value.partition("/")
    code = _REFERENCE_BYTE.get(rtype) if slash else None
    if code is not None:
        raw = _hex_id(rid)
        if raw is not None:
            return bytes((code,)) + raw
    return value.encode()


def value_of(key: bytes) -> str:
    """The value :func:`value_key` stored."""
    if key and 0x80 <= key[0] < 0x80 + len(REFERENCE_TYPES):
        return f"{REFERENCE_TYPES[key[0] - 0x80]}/{id_of(key[1:])}"
    return key.decode()


def reference_byte(rtype: str) -> int:
    """The first byte of a compact reference to ``rtype`` (:func:`value_key`)."""
    return _REFERENCE_BYTE[rtype]


def text_rows(rtype: str, rid: str, entries: Iterable[Entry]) -> dict[tuple[str, str, str], dict[str, str]]:
    """The rows of these entries as ``search_index`` held them from 0006 to 0008 (type and param as text),
    by their key (type and id aside): a date parameter's instant goes where a token's system does, its
    value left empty (see ``gateway/db/schema.py``). Migrations 0006 and 0009's downgrade write these."""
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for param, system, value in entries:
        if param in DATE_PARAMS:
            found_by, qualifier = "", value[:WIDTH]
        else:
            found_by, qualifier = value[:WIDTH], stored_system(system)[:WIDTH]
        rows[(param, found_by, qualifier)] = {
            "type": rtype,
            "param": param,
            "value": found_by,
            "id": rid,
            "system": qualifier,
        }
    return rows


#: Parameters whose entries hold a professional's national id under each of its three forms (RPPS or
#: ADELI number, the number under the idNatPs OID, the prefixed idNatPs: ``ps_identifier_forms``).
FORM_PARAMS = frozenset({"identifier", "participant.identifier"})


def _regular_national(system: str, value: str) -> tuple[str, str] | None:
    """(RPPS or ADELI system, number) when (system, value) is a form of a well-formed national id (ASCII
    digits of the system's length), else None: the only ids stored under their first form alone."""
    found = national_ps(system, value)
    if found is None:
        return None
    national, number = found
    return found if number.isascii() and number.isdigit() and len(number) == NATIONAL_LENGTH[national] else None


#: a message's professionals recur in every circle and role it writes
_known_national = lru_cache(maxsize=1024)(_regular_national)


def _spare_forms(entries: list[Entry]) -> set[Entry]:
    """The entries that another one of the same parameter stands for: the idNatPs OID forms of a
    well-formed national id whose first (RPPS / ADELI) form is there too. A search finds them through it
    (:func:`lookup_forms`), so they are not stored: two rows of each professional in each care circle."""
    spare: set[Entry] = set()
    present: set[Entry] | None = None
    for param, system, value in entries:
        if param not in FORM_PARAMS or len(value) > MEMO_LONGEST:
            continue
        found = _known_national(system, value)
        if found is None or found == (system, value):
            continue
        present = set(entries) if present is None else present
        if (param, *found) in present:
            spare.add((param, system, value))
    return spare


def lookup_forms(param: str, system: str | None, value: str) -> list[tuple[str | None, str]]:
    """The (system or None, value) lookups that find what a search on (system, value) found when every
    form of a national id was stored: itself, and the first form of the national id it is a form of
    (``8`` + RPPS and ``0`` + ADELI searched without a system are the idNatPs form). One or two."""
    found: list[tuple[str | None, str]] = [(system, value)]
    if param not in FORM_PARAMS or len(value) > MEMO_LONGEST:
        return found
    if system is not None:
        national = _known_national(system, value)
        if national is not None and national != (system, value):
            found.append(national)
        return found
    for national_system, (_code, prefix) in NATIONAL_PS.items():
        number = value[len(prefix) :]
        if value.startswith(prefix) and _known_national(national_system, number) == (national_system, number):
            found.append((national_system, number))
    return found


def stored_rows(rtype: str, rid: str, entries: Iterable[Entry]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """The ``search_index`` rows of these entries, by primary key (id aside): (type, param) as its
    :data:`PARAM_CODES` code, a date parameter's instant where a token's system goes, its value left empty
    (see ``gateway/db/schema.py``). An entry of a pair without a code (a type no search is declared for)
    is not stored: no search could read it; nor is a national id's idNatPs form beside its first form
    (:func:`_spare_forms`, since 0009).

    Every written version's entries pass here (~50 a message): the pair's code and kind are one lookup
    (:data:`_PLANS`), a system's stored form one more (:data:`_STORED_SYSTEMS`), not a function call each."""
    rows: dict[tuple[int, str, str], dict[str, Any]] = {}
    plans = _PLANS.get(rtype)
    if plans is None:
        return rows
    entries = list(entries)
    spare = _spare_forms(entries)
    systems = _STORED_SYSTEMS
    for entry in entries:
        param, system, value = entry
        plan = plans.get(param)
        if plan is None or (spare and entry in spare):
            continue
        code, dated = plan
        if dated:
            found_by, qualifier = "", value[:WIDTH]
        else:
            stored = systems.get(system)
            if stored is None:
                stored = _stored_system(system)
            found_by, qualifier = value[:WIDTH], stored
        rows[(code, found_by, qualifier)] = {"code": code, "value": found_by, "id": rid, "system": qualifier}
    return rows


#: type → parameter → (its :data:`PARAM_CODES` code, whether it is a date parameter): what
#: :func:`stored_rows` asks of every entry
_PLANS: dict[str, dict[str, tuple[int, bool]]] = {}
for (_type, _param), _code in PARAM_CODES.items():
    _PLANS.setdefault(_type, {})[_param] = (_code, _param in DATE_PARAMS)
#: system as given → ``stored_system(system)[:WIDTH]``: a few dozen systems recur in every message's
#: entries; emptied past :data:`STORED_SYSTEMS` systems, and none longer than ``MEMO_LONGEST`` is kept
_STORED_SYSTEMS: dict[str, str] = {}
STORED_SYSTEMS = 512


def _stored_system(system: str) -> str:
    """``stored_system(system)`` cut to the column's width, remembered in :data:`_STORED_SYSTEMS`."""
    stored = stored_system(system)[:WIDTH]
    if len(system) <= MEMO_LONGEST:
        if len(_STORED_SYSTEMS) >= STORED_SYSTEMS:
            _STORED_SYSTEMS.clear()
        _STORED_SYSTEMS[system] = stored
    return stored


def indexed_param(rtype: str, param: str) -> str:
    """The parameter whose entries answer a search on ``param`` (itself, or its alias's target)."""
    return ALIASES.get(rtype, {}).get(param, param)


def _identifiers(resource: JSON) -> list[Entry]:
    """A professional's national id is found under each of its forms (RPPS, idNatPs, RPPS under the OID)."""
    out: list[Entry] = []
    for i in resource.get("identifier", ()):
        if i.get("value"):
            out += [("identifier", system, value) for system, value in _forms(i)]
    return list(dict.fromkeys(out)) if len(out) > 1 else out


def _forms(identifier: JSON) -> list[tuple[str, str]]:
    """:func:`ps_identifier_forms` of an identifier with a value."""
    return ps_identifier_forms(str(identifier.get("system", "")), str(identifier["value"]))


def instant_bounds(text: str) -> tuple[datetime, datetime] | None:
    """A FHIR date or dateTime as the [start, end) range of its precision (``2026-03`` is all of March),
    in UTC; a date without a time is read in UTC. None when it is neither."""
    try:
        if len(text) == 4:
            start = datetime(int(text), 1, 1, tzinfo=UTC)
            return start, start.replace(year=start.year + 1)
        if len(text) == 7:
            start = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
            month = start.month % 12 + 1
            return start, start.replace(year=start.year + (start.month == 12), month=month)
        if len(text) == 10:
            start = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        return moment, moment + timedelta(milliseconds=1)
    except (ValueError, OverflowError):
        return None


def instant_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(INSTANT_FORMAT)


def _instant(text: str, upper: bool) -> str | None:
    bounds = instant_bounds(text)
    return instant_text(bounds[1] if upper else bounds[0]) if bounds else None


#: a stay's dates recur in its movements' and its circle's periods, and in the previous version's entries
_known_instant = lru_cache(maxsize=1024)(_instant)


def _date(param: str, value: Any, *, upper: bool = False) -> list[Entry]:
    """A date parameter entry: the value's first instant (its last one, exclusive, with ``upper``)."""
    if not value:
        return []
    text = str(value)
    instant = _instant(text, upper) if len(text) > MEMO_LONGEST else _known_instant(text, upper)
    return [(param, "", instant)] if instant is not None else []


def _careteam_period(team: JSON) -> list[Entry]:
    """CDS 2.0.1 ``start`` / ``end`` and R4 ``date`` of the circle's period: its start under ``date``, the
    instant it stops covering under ``date.end`` (its participants' follow, in :func:`search_entries`)."""
    period = team.get("period") or {}
    out = _date("date", period.get("start")) + _date("end", period.get("end"))  # ``start`` reads ``date``
    out += _date(PERIOD_END, period.get("end"), upper=True) or [(PERIOD_END, "", OPEN_END)]
    return out


def _reference(param: str, ref: JSON | None) -> list[Entry]:
    if ref and ref.get("reference"):
        return [(param, "", str(ref["reference"]))]
    return []


def _declaration_entries(resource: JSON) -> list[Entry]:
    """ANS NdE declarations: the subject is the contained Patient, whose local id is the gateway Patient's
    (``#<id>`` means ``Patient/<id>``) and whose identifiers answer ``patient.identifier``."""
    out: list[Entry] = []
    ref = str((resource.get("subject") or {}).get("reference", ""))
    if ref.startswith("#"):
        out.append(("subject", "", f"Patient/{ref[1:]}"))  # ``patient`` reads it too
        for item in resource.get("contained", []):
            if item.get("id") == ref[1:]:
                out += [
                    ("patient.identifier", str(i.get("system", "")), str(i["value"]))
                    for i in item.get("identifier", [])
                    if i.get("value")
                ]
    elif ref:
        out.append(("subject", "", ref))
    for ext in resource.get("extension", []):
        if str(ext.get("url", "")).endswith("/StructureDefinition/event-type"):
            for coding in (ext.get("valueCodeableConcept") or {}).get("coding", []):
                if coding.get("code"):
                    out.append(("event-type", str(coding.get("system", "")), str(coding["code"])))
    out += _reference("encounter", resource.get("encounter"))
    if resource.get("status"):
        out.append(("status", "", str(resource["status"])))
    return out


def _careteam_entries(team: JSON) -> list[Entry]:
    """A circle's entries after its identifiers. One walk of the participants (a circle has dozens of
    entries, and is written on most messages); their ``participant-start`` / ``participant-end`` entries
    follow the circle's own period's."""
    out = _reference("subject", team.get("subject"))  # ``patient`` reads it too (ALIASES)
    spans: list[Entry] = []
    for participant in team.get("participant", ()):
        member = participant.get("member") or {}
        reference = member.get("reference")
        if reference:
            out.append(("participant", "", str(reference)))
            behind = practitioner_of_role(str(reference))
            if behind:  # CDS members are roles: a practitioner still finds the circles he is in
                out.append(("participant", "", behind))
        for ext in participant.get("extension", ()):
            if ext.get("url") == PARTICIPANT_SOURCE:
                source = ext.get("valueString")
                if source and str(source).startswith("platform:"):
                    # who a platform follows: circles holding a member it added (gateway/db/access.py)
                    out.append(("_platform-source", "", str(source)))
                break
        ident = member.get("identifier")
        if ident and ident.get("value"):
            out += [("participant.identifier", system, value) for system, value in _forms(ident)]
        span = participant.get("period")
        if span:
            spans += _date("participant-start", span.get("start")) + _date("participant-end", span.get("end"))
    if team.get("status"):
        out.append(("status", "", str(team["status"])))
    out += _careteam_period(team)
    out += spans
    return out


def search_entries(resource: JSON) -> list[Entry]:
    """What ``Patient?identifier=``, ``Encounter?patient=`` and friends look up."""
    rtype = resource.get("resourceType")
    out = _identifiers(resource)
    if rtype == "Encounter":
        out += _reference("subject", resource.get("subject"))  # ``patient`` reads it too (ALIASES)
        out += _reference("part-of", resource.get("partOf"))
        if resource.get("status"):
            out.append(("status", "", str(resource["status"])))
        if (resource.get("period") or {}).get("start"):
            out.append(("date", "", str(resource["period"]["start"])))  # for _sort=date
        if resource.get("class", {}).get("code"):
            out.append(("class", str(resource["class"].get("system", "")), str(resource["class"]["code"])))
    elif rtype == "Patient":
        out += [("link", "", str(link["other"]["reference"])) for link in resource.get("link", []) if link.get("other")]
        if "active" in resource:
            out.append(("active", "", "true" if resource["active"] else "false"))
        for label in (resource.get("meta") or {}).get("security", []):
            if label.get("code"):
                # confidential patients (PD1-12 = Y → R) are hidden from platforms by the access policy
                out.append(("_security", str(label.get("system", "")), str(label["code"])))
    elif rtype == "CareTeam":
        out += _careteam_entries(resource)
    elif rtype == "PractitionerRole":
        out += _reference("practitioner", resource.get("practitioner"))
        out += _reference("organization", resource.get("organization"))
    elif rtype == "Organization":
        out += _reference("partof", resource.get("partOf"))
    elif rtype == "CommunicationRequest":
        out += _declaration_entries(resource)
    elif rtype == "Subscription":
        if resource.get("status"):
            out.append(("status", "", str(resource["status"])))
        if resource.get("criteria"):
            out.append(("criteria", "", str(resource["criteria"])[:255]))
            # Backport: ``url`` is the topic canonical (the criteria of a topic-based subscription)
            out.append(("url", "", str(resource["criteria"])[:255]))
    return out
