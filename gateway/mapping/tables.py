"""Loading and validating the mapping tables in ``mappings/`` (data only; checked once at start-up)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError
from gateway.hl7.er7 import Path as HL7Path
from gateway.mapping.ids import MEMO_LONGEST

_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[\])?(\.[A-Za-z_][A-Za-z0-9_]*(\[\])?)*$")

#: Identity events carry no visit (DOMAIN.md §2): the engine does not read their PV1, the fold ignores them.
IDENTITY_KINDS = frozenset({"person", "person-update", "change-identifier", "merge"})
#: A correction of a past movement (ZBE-4 = UPDATE), not a movement itself.
CORRECTION_KIND = "correction"
#: Kinds of event the state engine knows (kept here so that table validation needs no state import).
#: Visit kinds are folded by ``gateway.state.visits``.
EVENT_KINDS = frozenset(
    {
        # movements (INSERT)
        "preadmit",
        "pending-admit",
        "admit",
        "register",
        "change-class",
        "transfer",
        "pending-transfer",
        "doctor-change",
        "leave",
        "return",
        "pending-discharge",
        "discharge",
        # visit changes without a movement
        "update",
        CORRECTION_KIND,
        "move-account",
        # cancels
        "cancel-preadmit",
        "cancel-pending-admit",
        "cancel-admit",
        "cancel-transfer",
        "cancel-pending-transfer",
        "cancel-doctor-change",
        "cancel-leave",
        "cancel-return",
        "cancel-pending-discharge",
        "cancel-discharge",
        *IDENTITY_KINDS,
    }
)
#: Kinds that undo an insert whatever ZBE-4 says (A06/A07 cancel only when ZBE-4 says CANCEL).
CANCEL_KINDS = frozenset(kind for kind in EVENT_KINDS if kind.startswith("cancel-"))
ACTIONS = frozenset({"INSERT", "UPDATE", "CANCEL"})
#: Code tables the transforms read by name rather than through a rule's ``table`` argument.
BUILTIN_CODE_TABLES = (
    "IdentifierType",
    "ParticipationType",
    "InsAuthority_to_IdentifierType",
    "MessageStructure",
    "DeathOnDischarge",
    "CareTeamRole",
    "TRE_R254_TypeEvenement",
    "ADT_to_TRE_R254",
    "ChannelType_to_Medium",
)
#: ANS NdE: the TRE_R254 event types ADT triggers express (each checked against the terminology table).
EVENT_TYPE_TABLE, EVENT_TYPE_TERMINOLOGY = "ADT_to_TRE_R254", "TRE_R254_TypeEvenement"
#: Segment maps the engine uses by name, besides those ADT.yaml names.
BUILTIN_SEGMENT_MAPS = ("ROL_to_Participation", "PD1_to_Participation", "NK1_to_Contact")


@dataclass(frozen=True, slots=True)
class CodeRow:
    code: str
    target_code: str
    target_system: str = ""
    target_display: str = ""

    def coding(self) -> dict[str, str]:
        """A new Coding each call (callers may change it), without its empty elements."""
        out = {}
        if self.target_system:
            out["system"] = self.target_system
        if self.target_code:
            out["code"] = self.target_code
        if self.target_display:
            out["display"] = self.target_display
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    source: HL7Path
    target: str
    transform: str
    args: dict[str, Any] = field(default_factory=dict)
    repeat: bool = False
    #: ``str(source)``, what a warning names: built once at load, not for every rule of every message
    location: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "location", str(self.source))


@dataclass(frozen=True, slots=True)
class SegmentMap:
    name: str
    resource: str
    rules: tuple[Rule, ...]
    #: Constant elements added to a non-empty output (e.g. PD1-4 always means the médecin traitant).
    defaults: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventSpec:
    trigger: str
    kind: str
    action: str
    cancels: tuple[str, ...] = ()


#: (namespace, universal id, sender) → system answers kept by ``Authorities.system_for``, cleared past this
AUTHORITY_MEMO_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Authorities:
    national: dict[str, str]
    default: dict[str, str]
    senders: dict[str, dict[str, str]]
    #: ``system_for``'s answers, by its arguments: the tables never change once loaded
    _known: dict[tuple[str, str, str, str], str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def system_for(self, *, namespace: str, universal_id: str, sender: tuple[str, str]) -> str | None:
        """The FHIR system of an assigning authority; ``None`` when no table knows it.

        Memoized: a message asks for a handful of authorities (IPP, NDA, visit, each practitioner), the
        same ones message after message, and each answer costs a regular expression and two formatted keys.
        The memo is cleared once it holds ``AUTHORITY_MEMO_SIZE`` answers, and arguments longer than
        ``MEMO_LONGEST`` altogether are never kept, so that a hostile feed cannot grow it.
        """
        key = (namespace, universal_id, *sender)
        known = self._known
        try:
            return known[key]
        except KeyError:
            pass
        system = self.lookup(namespace=namespace, universal_id=universal_id, sender=sender)
        if sum(map(len, key)) <= MEMO_LONGEST:
            if len(known) >= AUTHORITY_MEMO_SIZE:
                known.clear()
            known[key] = system
        return system

    def lookup(self, *, namespace: str, universal_id: str, sender: tuple[str, str]) -> str | None:
        """``system_for`` without its memo."""
        if universal_id and universal_id in self.national:
            return self.national[universal_id]
        if universal_id and _OID.fullmatch(universal_id):
            return f"urn:oid:{universal_id}"
        app, facility = sender
        for key in (f"{app}|{facility}", f"*|{facility}"):
            table = self.senders.get(key)
            if table and namespace in table:
                return table[namespace]
        return self.default.get(namespace)


_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


@dataclass(frozen=True, slots=True)
class Tables:
    """Every table the engine reads, validated."""

    codes: dict[str, dict[str, CodeRow]]
    segments: dict[str, SegmentMap]
    events: dict[str, EventSpec]
    event_segments: dict[str, str]
    authorities: Authorities
    source: Path

    def code(self, table: str, code: str) -> CodeRow | None:
        return self.codes[table].get(code)


def load_tables(directory: Path, *, transforms: frozenset[str]) -> Tables:
    """Load and check every table; any problem raises :class:`ConfigError` naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"mappings directory not found: {directory}")
    codes = {p.stem: _load_codes(p) for p in sorted((directory / "codes").glob("*.csv"))}
    for name in BUILTIN_CODE_TABLES:
        if name not in codes:
            raise ConfigError(f"{directory / 'codes' / name}.csv: missing (the transforms read it)")
    segments = {
        p.stem: _load_segment_map(p, transforms, codes) for p in sorted((directory / "segments").glob("*.yaml"))
    }
    for name in BUILTIN_SEGMENT_MAPS:
        if name not in segments:
            raise ConfigError(f"{directory / 'segments' / name}.yaml: missing (the engine reads it)")
    events, event_segments = _load_events(directory / "messages" / "ADT.yaml", segments)
    authorities = _load_authorities(directory / "authorities.yaml")
    _check_event_types(codes, events, where=directory / "codes" / f"{EVENT_TYPE_TABLE}.csv")
    return Tables(
        codes=codes,
        segments=segments,
        events=events,
        event_segments=event_segments,
        authorities=authorities,
        source=directory,
    )


def _read_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: missing") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def _load_codes(path: Path) -> dict[str, CodeRow]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"code", "target_code"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}: a code table needs 'code' and 'target_code' columns")
        rows: dict[str, CodeRow] = {}
        for line, row in enumerate(reader, start=2):
            code = (row.get("code") or "").strip()
            if not code or not (row.get("target_code") or "").strip():
                raise ConfigError(f"{path}:{line}: empty code or target_code")
            if code in rows:
                raise ConfigError(f"{path}:{line}: code {code!r} appears twice")
            rows[code] = CodeRow(
                code=code,
                target_code=row["target_code"].strip(),
                target_system=(row.get("target_system") or "").strip(),
                target_display=(row.get("target_display") or "").strip(),
            )
    return rows


def _load_segment_map(path: Path, transforms: frozenset[str], codes: dict[str, dict[str, CodeRow]]) -> SegmentMap:
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data.get("resource"):
        raise ConfigError(f"{path}: needs 'resource' and a list of 'rules'")
    rules = []
    for index, raw in enumerate(data["rules"], start=1):
        where = f"{path} rule {index}"
        if not isinstance(raw, dict) or not {"from", "to", "transform"} <= raw.keys():
            raise ConfigError(f"{where}: needs 'from', 'to' and 'transform'")
        try:
            source = HL7Path.parse(str(raw["from"]))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if not _TARGET.match(str(raw["to"])):
            raise ConfigError(f"{where}: target {raw['to']!r} is not a dotted element path")
        if raw["transform"] not in transforms:
            raise ConfigError(f"{where}: unknown transform {raw['transform']!r}")
        args = raw.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: 'args' must be a mapping")
        table = args.get("table")
        if table is not None and table not in codes:
            raise ConfigError(f"{where}: unknown code table {table!r}")
        rules.append(
            Rule(
                source=source,
                target=str(raw["to"]),
                transform=raw["transform"],
                args=args,
                repeat=bool(raw.get("repeat")),
            )
        )
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or not all(isinstance(v, str) for v in defaults.values()):
        raise ConfigError(f"{path}: 'defaults' must map element names to strings")
    return SegmentMap(name=path.stem, resource=str(data["resource"]), rules=tuple(rules), defaults=dict(defaults))


def _load_events(path: Path, segments: dict[str, SegmentMap]) -> tuple[dict[str, EventSpec], dict[str, str]]:
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("events"), dict):
        raise ConfigError(f"{path}: needs an 'events' mapping")
    event_segments = data.get("segments") or {}
    for role, name in event_segments.items():
        if name not in segments:
            raise ConfigError(f"{path}: segment map {name!r} for {role!r} does not exist")
    for role in ("patient", "encounter", "movement"):
        if role not in event_segments:
            raise ConfigError(f"{path}: 'segments' needs a {role!r} map")
    events: dict[str, EventSpec] = {}
    for trigger, spec in data["events"].items():
        where = f"{path} event {trigger}"
        if not isinstance(spec, dict) or spec.get("kind") not in EVENT_KINDS:
            raise ConfigError(f"{where}: kind must be one of {sorted(EVENT_KINDS)}")
        action = spec.get("action", "INSERT")
        if action not in ACTIONS:
            raise ConfigError(f"{where}: action must be one of {sorted(ACTIONS)}")
        events[str(trigger)] = EventSpec(
            trigger=str(trigger),
            kind=spec["kind"],
            action=action,
            cancels=tuple(spec.get("cancels") or ()),
        )
    for spec in events.values():
        _check_event(spec, events, where=f"{path} event {spec.trigger}")
    return events, dict(event_segments)


def _check_event(spec: EventSpec, events: dict[str, EventSpec], *, where: str) -> None:
    """Cross-event rules: a cancel must say what it undoes, and only an insert can be undone.

    A06/A07 are inserts that list ``cancels`` too: ZBE-4 CANCEL turns each into the cancel of the other.
    """
    for cancelled in spec.cancels:
        if cancelled not in events:
            raise ConfigError(f"{where}: cancels unknown trigger {cancelled!r}")
        if events[cancelled].action != "INSERT":
            raise ConfigError(f"{where}: cancels {cancelled}, which is not an INSERT event")
    if spec.action == "CANCEL" and not spec.cancels:
        raise ConfigError(f"{where}: a CANCEL event needs 'cancels' (the trigger(s) it undoes)")
    if spec.kind == CORRECTION_KIND and spec.action != "UPDATE":
        raise ConfigError(f"{where}: a correction is an UPDATE (ZBE-4), not {spec.action}")


def _check_event_types(codes: dict[str, dict[str, CodeRow]], events: dict[str, EventSpec], *, where: Path) -> None:
    """Each ADT → TRE_R254 row names an INSERT trigger and a code of the terminology, exactly as it is there
    (code, system and display): a typo would send platforms an event type they cannot recognise."""
    terminology = codes[EVENT_TYPE_TERMINOLOGY]
    for trigger, row in codes[EVENT_TYPE_TABLE].items():
        spec = events.get(trigger)
        if spec is None or spec.action != "INSERT":
            raise ConfigError(f"{where}: {trigger!r} is not an INSERT trigger of messages/ADT.yaml")
        known = terminology.get(row.target_code)
        if known is None:
            raise ConfigError(f"{where}: {row.target_code!r} ({trigger}) is not a TRE_R254 code")
        if (row.target_system, row.target_display) != (known.target_system, known.target_display):
            raise ConfigError(f"{where}: {trigger} → {row.target_code}: system and display must be TRE_R254's")


def _load_authorities(path: Path) -> Authorities:
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping")
    national = {str(k): str(v) for k, v in (data.get("national") or {}).items()}
    default = {str(k): str(v) for k, v in (data.get("default") or {}).items()}
    senders: dict[str, dict[str, str]] = {}
    for key, table in (data.get("senders") or {}).items():
        if "|" not in str(key) or not isinstance(table, dict):
            raise ConfigError(f"{path}: sender key {key!r} must be 'MSH-3|MSH-4' with a mapping")
        senders[str(key)] = {str(k): str(v) for k, v in table.items()}
    for system in [*national.values(), *default.values(), *(v for t in senders.values() for v in t.values())]:
        if not re.match(r"^(urn:oid:[0-2](\.\d+)+|urn:(?!oid:)[a-z0-9-]+:.+|https?://\S+)$", system):
            raise ConfigError(f"{path}: {system!r} is not a URI usable as an identifier system")
    return Authorities(national=national, default=default, senders=senders)
