"""Repositories: the only place that runs SQL. Each takes a Connection inside the caller's transaction."""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import operator
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Connection,
    Integer,
    Select,
    TextClause,
    and_,
    bindparam,
    delete,
    event,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from gateway.clock import as_utc
from gateway.db import bodies
from gateway.db.access import Visibility, lookup_ids, visible_clause
from gateway.db.cursor import Row
from gateway.db.cursor import execute as run
from gateway.db.indexing import (
    indexed_param,
    lookup_forms,
    param_code,
    search_entries,
    stored_rows,
    stored_system,
)
from gateway.db.schema import (
    facts,
    index_id,
    messages,
    outbox,
    patient_links,
    resource_versions,
    resources,
    search_index,
    subscriptions,
)
from gateway.errors import StorageConflictError

K = TypeVar("K")
V = TypeVar("V")


class _Recent(Generic[K, V]):
    """The last ``size`` values kept by key, the oldest dropped first: what the unit of work parsed or
    computed from a stored body or text, which determines it, so that an entry is never stale.

    Used for resource contents (:data:`_PARSED`: a message reads again the doctors, units and hospital
    every message names, and what the previous message wrote, its stay, patient and circle; parsing a body
    cost ~7 µs), fact payloads and index entries. The values are shared by every unit of work that reads
    the same body, as the identity map shares them within one: the ingest path reads stored contents and
    writes new dicts, never changing one in place. Only the unit of work's repositories use them
    (``cached``); the API's reads parse their own copy. Threads share them without a lock (a dict's get
    and set are atomic under the GIL).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        #: ordered by insertion: ``popitem(last=False)`` drops the oldest in constant time, where a dict's
        #: ``next(iter(...))`` first walks past the slots its earlier deletions left
        self._values: collections.OrderedDict[K, V] = collections.OrderedDict()

    def get(self, key: K) -> V | None:
        return self._values.get(key)

    def keep(self, key: K, value: V) -> None:
        values = self._values
        values[key] = value
        if len(values) > self._size:
            try:
                values.popitem(last=False)
            except KeyError:  # another thread emptied it meanwhile
                return


JSON = dict[str, Any]
#: search index entries of a resource: (param, system, value)
IndexEntries = Sequence[tuple[str, str, str]]
#: a resource's ``search_index`` rows by key (id aside): :func:`gateway.db.indexing.stored_rows`
IndexRows = dict[tuple[int, str, str], dict[str, Any]]


#: SQLite hands back naive datetimes (stored as UTC): every read goes through this.
utc = as_utc


def dumps(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def packed(data: JSON) -> bytes:
    """A resource or fact as its ``body`` column holds it (sorted keys, compact, deflated)."""
    return bodies.encode(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


def _text(text: str, body: bytes | None) -> bytes | str:
    """The JSON of a row with a ``body`` (deflated) beside its older text column."""
    return bodies.decode(bytes(body)) if body is not None else text


def fhir_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: :func:`fhir_instant` of the moments writes stamped lately: every write of a unit stamps the unit's one
#: ``now`` (equal moments, even in other zones, have one UTC text)
_instant_of = functools.lru_cache(maxsize=8)(fhir_instant)


# -- statements built once -----------------------------------------------------------------------
#
# The hot path runs these with a dict of parameters. Building a Core statement per call cost ~95 µs
# (coercions, cache key), against ~15 µs for one built once and found in the compiled cache.

#: RETURNING on both stores (SQLite 3.35+): the id comes back in the one round trip, on the cursor too
_INSERT_MESSAGE = insert(messages).returning(messages.c.id)
#: ``status = 'applied'`` as a literal, not a bound parameter: a term bound to a parameter that qualifies a
#: partial index (``uq_messages_applied``) makes SQLite prepare the statement again on every execution
#: (~20-70 µs, more than the lookup). The index is unique: at most one row, no ORDER BY (a temp B-tree).
_FIND_APPLIED = (
    select(messages)
    .where(
        messages.c.sending_application == bindparam("app"),
        messages.c.sending_facility == bindparam("facility"),
        messages.c.control_id == bindparam("control_id"),
        messages.c.status == literal_column("'applied'"),
    )
    .limit(1)
)
_INSERT_FACT = insert(facts)
_FACTS_OF = select(facts.c.payload, facts.c.body).where(facts.c.stream == bindparam("stream")).order_by(facts.c.id)
_STREAM = (
    select(facts.c.kind, facts.c.payload, facts.c.body)
    .where(facts.c.stream == bindparam("stream"))
    .order_by(facts.c.id)
)
_FACTS_OF_KINDS = (
    select(facts.c.payload, facts.c.body)
    .where(facts.c.stream == bindparam("stream"), facts.c.kind.in_(bindparam("kinds", expanding=True)))
    .order_by(facts.c.id)
)


def _bucket(n: int) -> int:
    """The size of the ``IN`` list that holds ``n`` values: the next power of two, so that few statement
    shapes exist (the list is padded by repeating its last value, which matches nothing more)."""
    return 1 << max(n - 1, 0).bit_length()


def _in_values(prefix: str, values: Sequence[str]) -> dict[str, str]:
    """``values`` as the parameters ``<prefix>0 …`` of a padded ``IN`` list (see :func:`_bucket`)."""
    padded = [*values, *[values[-1]] * (_bucket(len(values)) - len(values))]
    return {f"{prefix}{i}": value for i, value in enumerate(padded)}


def _in_list(prefix: str, n: int) -> list[BindParameter[str]]:
    return [bindparam(f"{prefix}{i}") for i in range(_bucket(n))]


@functools.lru_cache(maxsize=32)
def _streams_statement(n: int) -> Select[Any]:
    """Every stream a message touches, in one read (the unit of work keeps them). The ``IN`` list is one
    bound parameter per value, not an expanding one: SQLAlchemy re-renders an expanding list on every
    execution, which cost more than the read itself."""
    return (
        select(facts.c.stream, facts.c.kind, facts.c.payload, facts.c.body)
        .where(facts.c.stream.in_(_in_list("s", n)))
        .order_by(facts.c.id)
    )


@functools.lru_cache(maxsize=16)
def _advisory_locks(n: int) -> TextClause:
    """``n`` advisory locks in one statement, ``SELECT pg_advisory_xact_lock(:k0), …``: a message's
    streams (its patient, stay and circle) were one round trip each. The target list is evaluated left
    to right, so they are taken in the order given; were two ever taken out of order, PostgreSQL would
    detect the deadlock and fail one transaction, which is then retried as any transient failure is
    (``StorageUnavailableError``)."""
    return text("SELECT " + ", ".join(f"pg_advisory_xact_lock(:k{i})" for i in range(n)))


_SURVIVOR = select(patient_links.c.survivor_id).where(patient_links.c.merged_id == bindparam("merged"))
#: whether a patient takes part in any merge, either side: one read answers both questions when not
_LINKED = (
    select(patient_links.c.merged_id)
    .where(or_(patient_links.c.merged_id == bindparam("pid"), patient_links.c.survivor_id == bindparam("pid")))
    .limit(1)
)
_MERGED_INTO = select(patient_links.c.merged_id).where(
    patient_links.c.survivor_id.in_(bindparam("survivors", expanding=True))
)
_GET_RESOURCE = select(resources).where(resources.c.type == bindparam("rtype"), resources.c.id == bindparam("rid"))
_GET_RESOURCE_LOCKED = _GET_RESOURCE.with_for_update()


@functools.lru_cache(maxsize=64)
def _get_resources_statement(n_types: int, n_ids: int) -> Select[Any]:
    """Several resources in one read: both key columns bound as lists, so that the (type, id) primary key
    serves it on both stores; pairs that were not asked for (a type crossed with another's id) are dropped.
    Lists of single parameters, padded (see :func:`_streams_statement`)."""
    return select(resources).where(
        resources.c.type.in_(_in_list("t", n_types)), resources.c.id.in_(_in_list("i", n_ids))
    )


_INSERT_RESOURCE = insert(resources)
#: optimistic: only over the version the writer read (``expected``), so a write never needs a row lock
#: taken at read time (see :meth:`ResourceRepo.write`)
_UPDATE_RESOURCE = (
    update(resources)
    .where(
        resources.c.type == bindparam("rtype"),
        resources.c.id == bindparam("rid"),
        resources.c.version_id == bindparam("expected"),
    )
    .values(
        version_id=bindparam("version_id"),
        last_updated=bindparam("last_updated"),
        deleted=bindparam("deleted"),
        content=bindparam("content"),
        body=bindparam("body"),
    )
)
#: a replaced version, as it was read from ``resources`` (the current version is never in this table)
_INSERT_VERSION = insert(resource_versions)


def _versions_of(*, version: bool) -> CompoundSelect[Any]:
    """A resource's versions: its current row in ``resources`` and the replaced ones in
    ``resource_versions`` (two primary-key lookups, no join), or only ``version`` of them."""
    parts = []
    for table in (resources, resource_versions):
        part = select(table).where(table.c.type == bindparam("rtype"), table.c.id == bindparam("rid"))
        parts.append(part.where(table.c.version_id == bindparam("version")) if version else part)
    both = union_all(*parts)
    return both.order_by(both.selected_columns.version_id.desc())


_VREAD = _versions_of(version=True)
_HISTORY = _versions_of(version=False)
#: one entry, by its whole key (there is no index by owner: see ``ResourceRepo._reindex``)
_DELETE_INDEX = delete(search_index).where(
    *(search_index.c[name] == bindparam(f"k_{name}") for name in ("code", "value", "id", "system"))
)
#: An entry already there is left alone (never an error that would reject a message): the index is a
#: projection, and a row an older extraction wrote must not stop a write.
_INSERT_INDEX = {
    "sqlite": sqlite.insert(search_index).on_conflict_do_nothing(),
    "postgresql": postgresql.insert(search_index).on_conflict_do_nothing(),
}
_LISTENING = (
    select(subscriptions)
    .where(
        subscriptions.c.topic == bindparam("topic"),
        subscriptions.c.status.in_(("requested", "active", "error")),
    )
    .order_by(subscriptions.c.id)
)
_LISTENING_ALL = (
    select(subscriptions)
    .where(subscriptions.c.status.in_(("requested", "active", "error")))
    .order_by(subscriptions.c.topic, subscriptions.c.id)
)
#: (Subscription ``end`` and NdE Start): the subscriptions valid at ``now``
_VALID_AT = (
    or_(subscriptions.c.end_at.is_(None), subscriptions.c.end_at > bindparam("now")),
    or_(subscriptions.c.start_at.is_(None), subscriptions.c.start_at <= bindparam("now")),
)
_LISTENING_AT = _LISTENING.where(*_VALID_AT)
_LISTENING_ALL_AT = _LISTENING_ALL.where(*_VALID_AT)
_NEXT_EVENT_NUMBER = (
    update(subscriptions)
    .where(subscriptions.c.id == bindparam("sub_id"))
    .values(events_since_start=subscriptions.c.events_since_start + 1)
    .returning(subscriptions.c.events_since_start)
)
_INSERT_OUTBOX = insert(outbox)


# -- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    received_at: datetime
    transport: str
    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str
    trigger_event: str
    content_sha256: str
    raw: bytes
    outcome: str
    status: str
    error_code: str | None
    error_text: str | None
    ack: str | None
    duplicate_of: int | None


class MessageRepo:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(
        self,
        *,
        raw: bytes,
        transport: str,
        received_at: datetime,
        header: dict[str, str],
        outcome: str,
        status: str,
        event_time: datetime | None = None,
        error_code: str | None = None,
        error_text: str | None = None,
        duplicate_of: int | None = None,
        ack: str | None = None,
    ) -> int:
        result = run(
            self.conn,
            _INSERT_MESSAGE,
            {
                "received_at": received_at,
                "transport": transport,
                "sending_application": header.get("sending_application", "")[:255],
                "sending_facility": header.get("sending_facility", "")[:255],
                "control_id": header.get("control_id", "")[:255],
                "message_type": header.get("message_type", "")[:16],
                "trigger_event": header.get("trigger", "")[:16],
                "event_time": event_time,
                "content_sha256": hashlib.sha256(raw).hexdigest(),
                "raw": b"",
                "body": bodies.packed_message(raw, ack),
                "outcome": outcome,
                "status": status,
                "error_code": error_code,
                "error_text": error_text,
                "duplicate_of": duplicate_of,
                "ack": None,
            },
        )
        return int(result.scalar_one())

    def find_applied(self, *, sending_application: str, sending_facility: str, control_id: str) -> MessageRecord | None:
        """The message already applied under this sender and control id, if any."""
        params = {"app": sending_application, "facility": sending_facility, "control_id": control_id}
        row = run(self.conn, _FIND_APPLIED, params).first()
        return _message(row) if row else None

    def get(self, message_id: int) -> MessageRecord | None:
        row = self.conn.execute(select(messages).where(messages.c.id == message_id)).first()
        return _message(row) if row else None

    def list(
        self, *, outcome: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[MessageRecord]:
        query = select(messages).order_by(messages.c.id.desc()).limit(limit)
        if outcome:
            query = query.where(messages.c.outcome == outcome)
        if before_id:
            query = query.where(messages.c.id < before_id)
        return [_message(r) for r in self.conn.execute(query)]

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute(select(messages.c.outcome, func.count()).group_by(messages.c.outcome))
        return {str(outcome): int(count) for outcome, count in rows}


def _message(row: Any) -> MessageRecord:
    m = row._mapping
    body = m["body"]
    raw, ack = bodies.unpacked_message(bytes(body)) if body is not None else (bytes(m["raw"]), m["ack"])
    return MessageRecord(
        id=int(m["id"]),
        received_at=utc(m["received_at"]) or datetime.now(UTC),
        transport=m["transport"],
        sending_application=m["sending_application"],
        sending_facility=m["sending_facility"],
        control_id=m["control_id"],
        message_type=m["message_type"],
        trigger_event=m["trigger_event"],
        content_sha256=m["content_sha256"],
        raw=raw,
        outcome=m["outcome"],
        status=m["status"],
        error_code=m["error_code"],
        error_text=m["error_text"],
        ack=ack,
        duplicate_of=m["duplicate_of"],
    )


# -- facts ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewFact:
    stream: str
    kind: str
    payload: JSON


class FactRepo:
    """Facts per stream. With ``cached``, a stream read once is kept (as JSON text) and kept current by this
    repo's own writes: for the unit of work, whose stream locks guarantee no one else writes those streams
    meanwhile. Its reads hand back payloads parsed once per text (:data:`_FACT_PAYLOADS`), shared by every
    unit of work that reads the same fact, read only: the folds build new dicts from them, never change one
    in place (as resource contents are shared, see :class:`_Recent`). Without ``cached``, each read parses anew."""

    def __init__(self, conn: Connection, *, cached: bool = False) -> None:
        self.conn = conn
        self._streams: dict[str, list[tuple[str, bytes | str]]] | None = {} if cached else None

    def lock(self, streams: Iterable[str]) -> None:
        """Serialize writers of the same streams across gateway instances (PostgreSQL advisory locks).

        SQLite needs nothing: BEGIN IMMEDIATE already makes every write transaction exclusive. Locks are
        taken in sorted order so that two messages touching the same streams cannot deadlock.
        """
        if self.conn.dialect.name != "postgresql":
            return
        keys = [
            int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "big", signed=True)
            for stream in sorted(set(streams))
        ]
        if keys:
            run(self.conn, _advisory_locks(len(keys)), {f"k{i}": key for i, key in enumerate(keys)})

    def preload(self, streams: Iterable[str]) -> None:
        """Read the streams a message will fold in one query instead of one each (cached repo only)."""
        if self._streams is None:
            return
        wanted = sorted({s for s in streams if s not in self._streams})
        if not wanted:
            return
        found: dict[str, list[tuple[str, bytes | str]]] = {stream: [] for stream in wanted}
        query = _streams_statement(len(wanted))
        for stream, kind, payload, body in run(self.conn, query, _in_values("s", wanted)):
            found[str(stream)].append((str(kind), _text(payload, body)))
        self._streams.update(found)

    def add(self, *, stream: str, message_id: int, event_time: datetime, kind: str, payload: JSON) -> None:
        self.add_many([NewFact(stream, kind, payload)], message_id=message_id, event_time=event_time)

    def add_many(self, new: Sequence[NewFact], *, message_id: int, event_time: datetime) -> None:
        """Several facts of one message in one statement, in order."""
        texts = [orjson.dumps(f.payload, option=orjson.OPT_SORT_KEYS) for f in new]
        rows: list[dict[str, Any]] = [
            {
                "stream": f.stream,
                "message_id": message_id,
                "event_time": event_time,
                "kind": f.kind,
                "payload": "",
                "body": bodies.encode(text),
            }
            for f, text in zip(new, texts, strict=True)
        ]
        if not rows:
            return
        run(self.conn, _INSERT_FACT, rows if len(rows) > 1 else rows[0])
        if self._streams is not None:
            for f, text in zip(new, texts, strict=True):
                if f.stream in self._streams:
                    self._streams[f.stream].append((f.kind, text))

    def forget_message(self, message_id: int) -> int:
        """Drop the facts a message recorded, before reprocessing it through the current mappings."""
        result = self.conn.execute(delete(facts).where(facts.c.message_id == message_id))
        return int(result.rowcount or 0)

    def of(self, stream: str, *, kinds: Sequence[str] | None = None) -> list[JSON]:
        """The stream's facts in the order they were written (folds sort them by event time)."""
        if self._streams is not None:
            return self._cached(stream, kinds)
        if kinds is None:
            rows = self.conn.execute(_FACTS_OF, {"stream": stream})
        else:
            rows = self.conn.execute(_FACTS_OF_KINDS, {"stream": stream, "kinds": list(kinds)})
        return [orjson.loads(_text(payload, body)) for payload, body in rows]

    def _cached(self, stream: str, kinds: Sequence[str] | None) -> list[JSON]:
        assert self._streams is not None
        if stream not in self._streams:
            rows = run(self.conn, _STREAM, {"stream": stream})
            self._streams[stream] = [(str(kind), _text(payload, body)) for kind, payload, body in rows]
        return [_fact_payload(p) for k, p in self._streams[stream] if kinds is None or k in kinds]


#: fact text → its payload, parsed once: a stay's facts are folded again on every message about it, and a
#: patient's on every message about him (a bounded number, the oldest dropped first, see :class:`_Recent`)
_FACT_PAYLOADS: _Recent[bytes | str, JSON] = _Recent(512)


def _fact_payload(text: bytes | str) -> JSON:
    payload = _FACT_PAYLOADS.get(text)
    if payload is None:
        payload = orjson.loads(text)
        _FACT_PAYLOADS.keep(text, payload)
    return payload


class PatientLinkRepo:
    """Merged patient → survivor, followed transitively (A merged into B, B later into C: A → C).

    With ``cached`` (the unit of work), patients found in no merge at all are remembered for the
    transaction: most messages are about such a patient, and one read then answers both who he now is
    and who was merged into him. Any link written forgets them.
    """

    def __init__(self, conn: Connection, *, cached: bool = False) -> None:
        self.conn = conn
        #: patient id → whether he is in no merge (asked once per transaction)
        self._unlinked: dict[str, bool] | None = {} if cached else None

    def link(self, *, merged_id: str, survivor_id: str, now: datetime) -> None:
        if self.survivor(survivor_id) == merged_id:
            return  # a merge in the other direction already stands; a cycle would loop forever
        if self._unlinked is not None:
            self._unlinked.clear()
        self.conn.execute(delete(patient_links).where(patient_links.c.merged_id == merged_id))
        self.conn.execute(insert(patient_links).values(merged_id=merged_id, survivor_id=survivor_id, created_at=now))

    def _in_no_merge(self, patient_id: str) -> bool:
        if self._unlinked is None:
            return False
        if patient_id not in self._unlinked:
            self._unlinked[patient_id] = run(self.conn, _LINKED, {"pid": patient_id}).first() is None
        return self._unlinked[patient_id]

    def survivor(self, patient_id: str) -> str:
        if self._in_no_merge(patient_id):
            return patient_id
        seen = {patient_id}
        current = patient_id
        while True:
            row = run(self.conn, _SURVIVOR, {"merged": current}).first()
            if row is None or row[0] in seen:
                return current
            current = str(row[0])
            seen.add(current)

    def merged_into(self, survivor_id: str) -> list[str]:
        """Every patient that ends up in ``survivor_id`` (transitively)."""
        if self._in_no_merge(survivor_id):
            return []
        found: list[str] = []
        frontier = [survivor_id]
        while frontier:
            rows = self.conn.execute(_MERGED_INTO, {"survivors": frontier}).all()
            frontier = [str(r[0]) for r in rows if str(r[0]) not in found and str(r[0]) != survivor_id]
            found.extend(frontier)
        return sorted(found)


# -- resources ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredResource:
    type: str
    id: str
    version_id: int
    last_updated: datetime
    content: JSON
    deleted: bool = False
    #: the row's ``content`` and ``body`` columns as read or written: when this version is replaced they
    #: are inserted into ``resource_versions`` as they are, neither serialised nor deflated again
    columns: tuple[str, bytes | None] | None = field(default=None, compare=False, repr=False)


#: the slots of :class:`StoredResource`, set directly by :func:`_resource`
_SET_SLOTS = tuple(getattr(StoredResource, f.name).__set__ for f in dataclasses.fields(StoredResource))


def _resource(
    rtype: str,
    rid: str,
    *,
    version_id: int,
    last_updated: datetime,
    content: JSON,
    deleted: bool,
    columns: tuple[str, bytes | None] | None,
) -> StoredResource:
    """``StoredResource(...)`` for the store's own reads and writes (~14 a message): the frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, twice the cost of setting its slots."""
    out: StoredResource = object.__new__(StoredResource)
    s_type, s_id, s_version, s_updated, s_content, s_deleted, s_columns = _SET_SLOTS
    s_type(out, rtype)
    s_id(out, rid)
    s_version(out, version_id)
    s_updated(out, last_updated)
    s_content(out, content)
    s_deleted(out, deleted)
    s_columns(out, columns)
    return out


#: Told what a filtered repository returned: (interaction, resource type, resources), for the audit trail.
AuditSink = Callable[[str, str, Sequence["StoredResource"]], None]


class ResourceRepo:
    """Resources and their versions.

    Built with a ``visibility`` (a caller's, from the authorization policy), every read, version read,
    history and search is filtered by it in SQL, and an ``audit`` sink hears what was returned. Internal
    callers (ingest, delivery) pass neither and see everything. With ``cached`` (the unit of work),
    resources read or written are kept by id for the transaction (an identity map): refolds read the
    patient and the circle several times; and the version rows written wait for :meth:`flush`, which
    inserts them in one statement (nothing in a message's transaction reads versions: only ``vread`` and
    ``history`` do, and they flush first).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        visibility: Visibility | None = None,
        audit: AuditSink | None = None,
        cached: bool = False,
    ) -> None:
        self.conn = conn
        self.visibility = visibility
        self.audit = audit
        self._seen: dict[tuple[str, str], StoredResource | None] | None = {} if cached else None
        self._locked: set[tuple[str, str]] = set()
        #: version rows not inserted yet (cached repo only; see :meth:`flush`)
        self._versions: list[dict[str, Any]] | None = [] if cached else None
        #: new resources' rows not inserted yet, and the optimistic UPDATEs of the others (their new row and
        #: the version expected), by (type, id) (cached repo only; see :meth:`flush`)
        self._inserts: dict[tuple[str, str], dict[str, Any]] | None = {} if cached else None
        self._updates: dict[tuple[str, str], dict[str, Any]] | None = {} if cached else None
        #: index rows to delete and to insert, by their whole key: each key in one of them at most, the
        #: last change made to it (cached repo only; see :meth:`_reindex`)
        self._gone: dict[tuple[str, int, str, str], dict[str, Any]] = {}
        self._added: dict[tuple[str, int, str, str], dict[str, Any]] = {}
        #: the resource types whose rows (resources or index) wait for :meth:`flush`: a search of one flushes
        self._pending: set[str] = set()

    def _heard(self, interaction: str, rtype: str, found: Sequence[StoredResource]) -> None:
        if self.audit is not None:
            self.audit(interaction, rtype, found)

    def _visible(self, rtype: str, rid: str) -> bool:
        return self.visibility is None or self.visibility.everything or self.exists(rtype, rid)

    def exists(self, rtype: str, rid: str) -> bool:
        """Whether the resource exists and is visible (no content read, nothing audited)."""
        self.flush()
        query = select(resources.c.id).where(resources.c.type == rtype, resources.c.id == rid)
        clause = visible_clause(self.visibility, rtype)
        if clause is not None:
            query = query.where(clause)
        return self.conn.execute(query).first() is not None

    def get(self, rtype: str, rid: str, *, for_update: bool = False) -> StoredResource | None:
        locked = for_update and self.conn.dialect.name == "postgresql"
        clause = visible_clause(self.visibility, rtype)
        if clause is not None:
            # A caller's filtered read (the API): built per call, never cached.
            query = select(resources).where(resources.c.type == rtype, resources.c.id == rid, clause)
            row = self.conn.execute(query.with_for_update() if locked else query).first()
            found = _stored(row) if row else None
        else:
            found = self._get_unfiltered(rtype, rid, locked=locked)
        self._heard("read", rtype, [found] if found else [])
        return found

    def _get_unfiltered(self, rtype: str, rid: str, *, locked: bool) -> StoredResource | None:
        key = (rtype, rid)
        if self._seen is not None and key in self._seen and (not locked or key in self._locked):
            return self._seen[key]
        if locked and self._pending:
            self.flush()  # a row this unit writes is read locked from the store: written first
        row = run(self.conn, _GET_RESOURCE_LOCKED if locked else _GET_RESOURCE, {"rtype": rtype, "rid": rid}).first()
        found = _stored(row, shared=self._seen is not None) if row else None
        self._remember(key, found, locked=locked)
        return found

    def preload(self, keys: Iterable[tuple[str, str]]) -> None:
        """Read several resources in one query, for the identity map: a message writes its patient, stay,
        circle and doctors, each read before its write. No row is locked: writes are optimistic
        (:meth:`write`), so the doctors and units many messages name are not held by each of them."""
        if self._seen is None:
            return
        wanted = {k for k in keys if k not in self._seen}
        if not wanted:
            return
        rtypes, rids = sorted({t for t, _ in wanted}), sorted({i for _, i in wanted})
        query = _get_resources_statement(len(rtypes), len(rids))
        found = {}
        for row in run(self.conn, query, _in_values("t", rtypes) | _in_values("i", rids)):
            columns = _columns(row)
            found[(str(columns[0]), str(columns[1]))] = columns
        for key in wanted:
            got = found.get(key)
            self._remember(key, _stored_columns(got, shared=True) if got is not None else None)

    def _found(self, row: Any) -> StoredResource:
        """A row a search returned: the identity map's resource when it holds that very version, so that a
        refold's search (a stay's movements, a patient's stays) does not inflate and parse again what the
        unit has just read or written; a version number names one content, and one not deleted."""
        columns = _columns(row)
        if self._seen is not None:
            rtype, rid, version, _, deleted, _, _ = columns
            known = self._seen.get((rtype, rid))
            if known is not None and known.version_id == version and not known.deleted and not deleted:
                return known
        return _stored_columns(columns, shared=self._seen is not None)

    def held(self, rtype: str) -> list[StoredResource]:
        """The resources of ``rtype`` the identity map holds (read or written by this unit), not deleted,
        in a search's order (newest first, then by id); empty outside a unit of work."""
        found = [r for r in (self._seen or {}).values() if r is not None and r.type == rtype and not r.deleted]
        return _search_order(found)

    def _written(self, rtype: str) -> dict[tuple[str, str], StoredResource] | None:
        """The resources of ``rtype`` whose rows wait for :meth:`flush`, as written (the identity map's);
        None outside a unit of work, or for a filtered repository (its searches flush)."""
        if self._seen is None or self.visibility is not None:
            return None
        keys = [k for k in [*(self._inserts or {}), *(self._updates or {})] if k[0] == rtype]
        return {k: found for k in keys if (found := self._seen.get(k)) is not None and not found.deleted}

    def _remember(self, key: tuple[str, str], found: StoredResource | None, *, locked: bool = False) -> None:
        if self._seen is not None:
            self._seen[key] = found
            if locked:
                self._locked.add(key)

    def current(self) -> list[StoredResource]:
        """Every resource not deleted, unfiltered (``gateway convert``'s throw-away store)."""
        self.flush()
        return [_stored(r) for r in self.conn.execute(select(resources).where(resources.c.deleted == 0))]

    def flush(self) -> None:
        """Write what the unit of work held back since the last flush, one statement each: the new
        resources, the UPDATEs of the others, the replaced versions, the index rows gone and those added
        (the unit's searches find the resources it wrote, and each row once). The unit of work calls it
        once a message's refolds are done, inside that message's transaction (or SAVEPOINT), so that they
        commit or roll back with the rest of the message; a search of a type with rows held back, ``exists``,
        ``vread``, ``history`` and a locked read flush first.

        What was held back until here meets a concurrent writer's as it would have at the write: the unique
        key refuses a second INSERT of a new resource (``StorageConflictError`` through ``translated``), and
        an UPDATE over a version another writer has replaced matches no row (``StorageConflictError``)."""
        if not self._pending and not self._versions:
            return
        # taken out first: after a conflict below nothing of it is written again (the unit is abandoned)
        inserts, updates = list((self._inserts or {}).values()), list((self._updates or {}).values())
        versions, gone, added = self._versions or [], list(self._gone.values()), list(self._added.values())
        self._inserts, self._updates, self._versions = {}, {}, []
        self._gone, self._added = {}, {}
        self._pending.clear()
        if inserts:
            run(self.conn, _INSERT_RESOURCE, inserts if len(inserts) > 1 else inserts[0])
        # each UPDATE matches one row at most (the primary key): fewer than all, a concurrent writer's version
        matched = run(self.conn, _UPDATE_RESOURCE, updates if len(updates) > 1 else updates[0]) if updates else None
        if matched is not None and matched.rowcount != len(updates):
            raise StorageConflictError("a resource changed since it was read (concurrent writer)")
        if versions:
            run(self.conn, _INSERT_VERSION, versions if len(versions) > 1 else versions[0])
        if gone:
            keys = [
                {"k_code": r["code"], "k_value": r["value"], "k_id": r["id"], "k_system": r["system"]} for r in gone
            ]
            run(self.conn, _DELETE_INDEX, keys)
        if added:
            run(self.conn, _INSERT_INDEX[self.conn.dialect.name], added)

    def _keep_replaced(self, replaced: StoredResource) -> None:
        """``replaced``, which a write or delete has just overwritten in ``resources``, into
        ``resource_versions``: held back for :meth:`flush` in a unit of work, inserted at once otherwise.

        Each body is stored once: the current version only in ``resources``, the older ones only here
        (a new resource inserts no version row)."""
        content, body = replaced.columns if replaced.columns is not None else ("", packed(replaced.content))
        row = {
            "type": replaced.type,
            "id": replaced.id,
            "version_id": replaced.version_id,
            "last_updated": replaced.last_updated,
            "deleted": int(replaced.deleted),
            "content": content,
            "body": body,
        }
        if self._versions is not None:
            self._versions.append(row)
        else:
            run(self.conn, _INSERT_VERSION, row)

    def vread(self, rtype: str, rid: str, version: int) -> StoredResource | None:
        self.flush()
        if not self._visible(rtype, rid):
            return None
        row = run(self.conn, _VREAD, {"rtype": rtype, "rid": rid, "version": version}).first()
        found = _stored(row) if row else None
        self._heard("vread", rtype, [found] if found else [])
        return found

    def history(self, rtype: str, rid: str) -> list[StoredResource]:
        """Every version, newest first: the current one from ``resources``, the replaced ones after it."""
        self.flush()
        if not self._visible(rtype, rid):
            return []
        found = [_stored(r) for r in run(self.conn, _HISTORY, {"rtype": rtype, "rid": rid})]
        self._heard("history-instance", rtype, found[:1])
        return found

    def put(
        self,
        content: JSON,
        *,
        now: datetime,
        index: Sequence[tuple[str, str, str]],
    ) -> tuple[StoredResource, bool]:
        """Write a new version unless the content (meta aside) is unchanged; returns (stored, changed)."""
        stored, previous = self.write(content, now=now, index=index)
        return stored, stored is not previous

    def write(
        self, content: JSON, *, now: datetime, index: IndexEntries | Callable[[], IndexEntries]
    ) -> tuple[StoredResource, StoredResource | None]:
        """Like :meth:`put`, returning (stored, previous): ``stored is previous`` when nothing changed.

        Optimistic: the resource is read without a lock and updated only over the version read, so an
        unchanged resource (most of a message's doctors and units) is never locked, and two gateways
        writing the same one cannot deadlock. A concurrent writer's version (or insert) makes this raise
        :class:`StorageConflictError` (in a unit of work: its :meth:`flush`, which runs the unit's UPDATEs
        together, before its transaction or SAVEPOINT ends), and the message is applied again from a fresh
        read.

        Callers that compare versions (topics) get the previous one from the same read. ``index`` may be a
        function that computes the entries: it is called only when a version is written (most writes of a
        message find the resource unchanged).
        """
        rtype, rid = str(content["resourceType"]), str(content["id"])
        current = self.get(rtype, rid)
        if current is not None and not current.deleted and _same(current.content, content):
            return current, current
        if callable(index):
            index = index()
        version = current.version_id + 1 if current else 1
        body = dict(content)
        meta = {k: v for k, v in (content.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        body["meta"] = {"versionId": str(version), "lastUpdated": _instant_of(now), **meta}
        deflated = packed(body)
        values = {"version_id": version, "last_updated": now, "deleted": 0, "content": "", "body": deflated}
        inserts, updates = self._inserts, self._updates
        if inserts is not None and updates is not None:
            # a unit of work: the row waits for flush (the identity map answers reads of it meanwhile); one
            # written again in the same unit becomes the newer version of the held-back row, whose UPDATE
            # still expects the version the unit read from the store
            key = (rtype, rid)
            if current is None or key in inserts:
                inserts[key] = {"type": rtype, "id": rid, **values}
            else:
                held = updates.get(key)
                expected = held["expected"] if held is not None else current.version_id
                updates[key] = {"rtype": rtype, "rid": rid, "expected": expected, **values}
            if current is not None:
                self._keep_replaced(current)
            self._pending.add(rtype)
        elif current is None:
            run(self.conn, _INSERT_RESOURCE, {"type": rtype, "id": rid, **values})
        else:
            where = {"rtype": rtype, "rid": rid, "expected": current.version_id}
            if run(self.conn, _UPDATE_RESOURCE, {**where, **values}).rowcount != 1:
                raise StorageConflictError(f"{rtype} changed since it was read (concurrent writer)")
            self._keep_replaced(current)
        rows = self._reindex(rtype, rid, stored_rows(rtype, rid, index), previous=current)
        stored = _resource(
            rtype, rid, version_id=version, last_updated=now, content=body, deleted=False, columns=("", deflated)
        )
        if self._seen is not None:
            _PARSED.keep(deflated, body)  # the next message reads it back (its stay, patient, circle)
            _ROWS.keep(deflated, rows)  # and rewrites its index rows from these (see _reindex)
        self._remember((rtype, rid), stored)
        return stored, current

    def delete(self, rtype: str, rid: str, *, now: datetime) -> bool:
        """FHIR delete: a new version marked deleted; reads then answer 410 and searches skip it."""
        self.flush()  # the row updated below must be in the store
        current = self.get(rtype, rid, for_update=True)
        if current is None or current.deleted:
            return False
        version = current.version_id + 1
        content, body = current.columns if current.columns is not None else ("", packed(current.content))
        values = {"version_id": version, "last_updated": now, "deleted": 1, "content": content, "body": body}
        self.conn.execute(update(resources).where(resources.c.type == rtype, resources.c.id == rid).values(**values))
        self._keep_replaced(current)
        self._reindex(rtype, rid, {}, previous=current)
        self._remember((rtype, rid), _stored_values(rtype, rid, values, content=current.content))
        return True

    def _reindex(self, rtype: str, rid: str, new: IndexRows, *, previous: StoredResource | None) -> IndexRows:
        """Rewrite only the index rows that changed: those of ``previous`` (as written from its content)
        that ``new`` lacks are deleted by key, the new ones inserted; returns ``new``.

        ``new`` is ``stored_rows`` of ``search_entries`` of the content written (every caller passes that).
        The index has no by-owner index to delete from, which is what keeps it one B-tree; a change to what
        ``gateway/db/indexing.py`` extracts therefore comes with a migration that rebuilds the index
        (``reindex_all``; ``INDEX_FINGERPRINT`` in tests/unit/test_search_params.py fails until then).

        In a unit of work the changes wait for :meth:`flush`, netted by key (the last change to a row is
        the one made), so that a message's index rows are two statements at most, not two per write.
        """
        old = _rows_before(previous) if previous and not previous.deleted else {}
        gone, added = old.keys() - new.keys(), new.keys() - old.keys()
        if self._seen is None:  # outside a unit of work: at once
            if gone:
                run(self.conn, _DELETE_INDEX, [{f"k_{k}": v for k, v in old[key].items()} for key in gone])
            if added:
                run(self.conn, _INSERT_INDEX[self.conn.dialect.name], [new[key] for key in added])
            return new
        if gone or added:
            self._pending.add(rtype)
        for key in gone:
            full = (rid, *key)
            self._added.pop(full, None)
            self._gone[full] = old[key]
        for key in added:
            full = (rid, *key)
            self._gone.pop(full, None)  # deleted and inserted again: the insert alone leaves the same row
            self._added[full] = new[key]
        return new

    def search(
        self,
        rtype: str,
        criteria: Sequence[tuple[str, str | None, str]],
        *,
        limit: int,
        offset: int = 0,
        count: bool = True,
        order: Sequence[tuple[str, bool]] = (),
        updated: Sequence[tuple[str, datetime]] = (),
        dates: Sequence[tuple[str, str, str]] = (),
        held_back: Callable[[StoredResource], bool] | None = None,
    ) -> tuple[list[StoredResource], int]:
        """Resources matching every (param, system or None, value) criterion; (page, total).

        ``held_back`` (a unit of work's internal search, ``count=False``, first page): the unit's rows of
        ``rtype`` held back for :meth:`flush` stay held back. The store answers for the resources the unit
        has not written since its last flush, and ``held_back`` says which of those it has written match
        (the criteria read from their content, as the index would); in a search's order. The same page as a
        flush and a search, without the flush's statements in the middle of the unit (a circle's search
        of the stays, right after the stay's refold wrote them).

        ``order`` is ``_sort``: (``_lastUpdated`` | ``_id`` | an indexed parameter, descending?) keys, newest
        first by default. ``updated`` is ``_lastUpdated``: (``ge`` | ``lt``, instant) bounds. ``dates`` are
        (param, ``ge`` | ``lt``, bound) comparisons on indexed instants (fixed-width UTC text): some entry
        of the parameter must meet each.

        The first criterion is a one-level ``id IN (ids from the index on code, value)``; the others
        are correlated EXISTS. Driving from resources made SQLite scan every resource of the type, a DISTINCT
        derived table made it pick the (type, id) index, and nested IN subqueries made PostgreSQL scan: all
        grew with the store. Query plans are checked by tests/integration/test_query_plans.py.
        """
        written = self._written(rtype) if held_back is not None and not count and not offset else None
        if self._pending and (rtype in self._pending or self.visibility is not None) and written is None:
            self.flush()  # what this unit wrote of the type (rows and index) is in the store before it is read
        wanted = limit
        if written:
            limit += len(written)  # the store's rows of those are left out below: as many more may follow
        coded = [_coded_criterion(rtype, param, system, value) for param, system, value in criteria]
        dates = [(indexed_param(rtype, param), op, bound) for param, op, bound in dates]
        order = [(indexed_param(rtype, name), descending) for name, descending in order]
        clause = visible_clause(self.visibility, rtype)
        execute: Callable[[Any, dict[str, Any]], Any]
        if order or updated or dates or clause is not None:
            page_query, count_query = _dynamic_search(
                rtype, coded, order=order, updated=updated, clause=clause, dates=dates
            )
            params: dict[str, Any] = {"limit": limit, "offset": offset}
            # Built for this call: through SQLAlchemy, whose compiled cache knows its shape. The cursor
            # path compiles per statement object, and would compile it anew and crowd out the hot path's.
            execute = self.conn.execute
        else:
            shape = tuple((code == "_id", tuple(s is not None for s, _ in lookups)) for code, lookups in coded)
            params = {"rtype": rtype, "limit": limit, "offset": offset}
            for i, (code, lookups) in enumerate(coded):
                params[f"p{i}"] = code
                for j, (system, value) in enumerate(lookups):
                    params.update({f"v{i}_{j}": value, f"s{i}_{j}": system})
            page_query, count_query = _search_statements(shape)
            execute = functools.partial(run, self.conn)
        page = [self._found(r) for r in execute(page_query, params)]
        if written and held_back is not None:
            page = [r for r in page if (r.type, r.id) not in written] + [r for r in written.values() if held_back(r)]
            page = _search_order(page)[:wanted]
        self._heard("search-type", rtype, page)
        if not count:
            return page, len(page)  # internal callers want the rows, not a total (one query fewer)
        total = int(execute(count_query, params).scalar_one())
        return page, total


#: a search criterion as the index answers it: (the (type, param) code, or ``_id``; its lookups, (stored
#: system or None, value) each, any of which finds a resource: ``indexing.lookup_forms``)
Coded = tuple[Any, tuple[tuple[str | None, str], ...]]


def _coded_criterion(rtype: str, param: str, system: str | None, value: str) -> Coded:
    """A (param, system or None, value) criterion as the index is searched for it: the alias's target's
    code (``PARAM_CODES``), systems as stored, and a national id's other forms (``lookup_forms``)."""
    param = indexed_param(rtype, param)
    if param == "_id":
        return "_id", ((None, value),)
    lookups = tuple((None if s is None else stored_system(s), v) for s, v in lookup_forms(param, system, value))
    return param_code(rtype, param), lookups


@functools.lru_cache(maxsize=128)
def _search_statements(shape: tuple[tuple[bool, tuple[bool, ...]], ...]) -> tuple[Select[Any], Select[Any]]:
    """(page, count) statements for criteria of this shape ((is ``_id``, has a system per lookup) each),
    built once.

    Values are bound as ``p<i>`` (the code), ``s<i>_<j>`` (system), ``v<i>_<j>`` (value), plus ``rtype``,
    ``limit`` and ``offset``: the refolds search on every message, and building the statement cost more
    than running it.
    """
    rtype: BindParameter[str] = bindparam("rtype")
    bound: list[Criterion] = [
        (
            is_id,
            bindparam(f"p{i}"),
            tuple(
                (bindparam(f"s{i}_{j}") if has_system else None, bindparam(f"v{i}_{j}"))
                for j, has_system in enumerate(systems)
            ),
        )
        for i, (is_id, systems) in enumerate(shape)
    ]
    matching = _matching(select(resources).where(resources.c.type == rtype, resources.c.deleted == 0), bound)
    page = (
        matching.order_by(resources.c.last_updated.desc(), resources.c.id)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )
    return page, select(func.count()).select_from(matching.subquery())


#: (is ``_id``, code, lookups: (system or None, value) each): bound parameters (statements built once)
#: or plain values
Criterion = tuple[bool, Any, tuple[tuple[Any, Any], ...]]


def _matching(matching: Select[Any], criteria: Sequence[Criterion]) -> Select[Any]:
    """``matching`` narrowed by each criterion, the same for statements built once and per request.

    The first criterion drives the query from the index (code, value): the plan stays an index lookup (one
    per lookup of the criterion, in a UNION ALL) however large the store grows, on SQLite and PostgreSQL
    alike; the others are correlated EXISTS (OR-ed per lookup).
    """
    driving = True
    for is_id, code, lookups in criteria:
        if is_id:
            matching = matching.where(resources.c.id == lookups[0][1])
            continue
        if driving:
            matching = matching.where(resources.c.id.in_(lookup_ids(code, lookups)))
            driving = False
            continue
        found = []
        for system, value in lookups:
            entry = search_index.alias()
            found.append(
                exists().where(
                    entry.c.code == code,
                    entry.c.value == value,
                    entry.c.id == index_id(resources.c.id),
                    *([entry.c.system == system] if system is not None else []),
                )
            )
        matching = matching.where(or_(*found))
    return matching


def _dynamic_search(
    rtype: str,
    criteria: Sequence[Coded],
    *,
    order: Sequence[tuple[str, bool]],
    updated: Sequence[tuple[str, datetime]],
    clause: Any = None,
    dates: Sequence[tuple[str, str, str]] = (),
) -> tuple[Select[Any], Select[Any]]:
    """(page, count) statements for ``_sort``, ``_lastUpdated`` and a caller's visibility ``clause`` (the
    REST API's searches, built per request); values are inline, ``limit`` and ``offset`` bound as in
    :func:`_search_statements`."""
    matching = select(resources).where(resources.c.type == rtype, resources.c.deleted == 0)
    if clause is not None:
        matching = matching.where(clause)
    matching = _matching(matching, [(code == "_id", code, lookups) for code, lookups in criteria])
    for op, bound in updated:
        matching = matching.where(resources.c.last_updated >= bound if op == "ge" else resources.c.last_updated < bound)
    for param, op, bound_text in dates:
        entry = search_index.alias()  # a date's instant is in ``system``, keyed by owner (schema.py)
        matching = matching.where(
            exists().where(
                entry.c.code == param_code(rtype, param),
                entry.c.value == "",
                entry.c.id == index_id(resources.c.id),
                entry.c.system >= bound_text if op == "ge" else entry.c.system < bound_text,
            )
        )
    page = (
        matching.order_by(*_sort_keys(rtype, order))
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )
    return page, select(func.count()).select_from(matching.subquery())


def _sort_keys(rtype: str, order: Sequence[tuple[str, bool]]) -> list[Any]:
    """ORDER BY for ``_sort``; the id breaks ties so that paging is stable."""
    keys: list[Any] = []
    for name, descending in order or [("_lastUpdated", True)]:
        if name == "_lastUpdated":
            column: Any = resources.c.last_updated
        elif name == "_id":
            column = resources.c.id
        else:  # an indexed parameter (a date): its smallest indexed value, resources without it last
            entry = search_index.alias()
            column = (
                select(func.min(entry.c.system))
                .where(
                    entry.c.code == param_code(rtype, name),
                    entry.c.value == "",
                    entry.c.id == index_id(resources.c.id),
                )
                .scalar_subquery()
            )
            keys.append(column.is_(None))
        keys.append(column.desc() if descending else column.asc())
    keys.append(resources.c.id)
    return keys


def _search_order(found: list[StoredResource]) -> list[StoredResource]:
    """``found`` in the order a search returns its rows: newest first, then by id."""
    found.sort(key=lambda r: r.id)
    found.sort(key=lambda r: r.last_updated, reverse=True)
    return found


_VERSION_KEYS = ("versionId", "lastUpdated")


def _same(old: JSON, new: JSON) -> bool:
    """Equal but for versionId/lastUpdated: then no new version is written (replays change nothing).

    Compared key by key, without copying either resource (most writes of a message find it unchanged);
    an absent ``meta`` equals one holding nothing but the version."""
    if len(old) - ("meta" in old) != len(new) - ("meta" in new):
        return False
    for key, value in new.items():
        if key != "meta" and (key not in old or old[key] != value):
            return False
    # the metas, versionId and lastUpdated aside, read in place (two dicts built per call cost a third)
    old_meta, new_meta = old.get("meta") or {}, new.get("meta") or {}
    kept = 0
    for key, value in new_meta.items():
        if key not in _VERSION_KEYS:
            if key not in old_meta or old_meta[key] != value:
                return False
            kept += 1
    return kept == len(old_meta) - ("versionId" in old_meta) - ("lastUpdated" in old_meta)


def _stored_values(rtype: str, rid: str, values: dict[str, Any], *, content: JSON) -> StoredResource:
    return StoredResource(
        type=rtype,
        id=rid,
        version_id=int(values["version_id"]),
        last_updated=values["last_updated"],
        content=content,
        deleted=bool(values["deleted"]),
        columns=(values["content"], values["body"]),
    )


#: the index rows of the bodies the unit of work wrote lately, by their stored bytes: the next version's
#: rewrite of the index needs the previous one's rows (a body's bytes determine them, as its content)
_ROWS: _Recent[bytes, IndexRows] = _Recent(256)


def _rows_before(previous: StoredResource) -> IndexRows:
    """The index rows of a version about to be replaced: kept since its write when this process wrote it
    lately (a stay's discharge replaces what its admission wrote), else computed from its content."""
    body = previous.columns[1] if previous.columns is not None else None
    known = _ROWS.get(body) if body is not None else None
    if known is not None:
        return known
    return stored_rows(previous.type, previous.id, search_entries(previous.content))


#: resource contents by stored body (a few messages' worth of resources)
_PARSED: _Recent[bytes, JSON] = _Recent(256)


#: the columns of a ``resources`` (or ``resource_versions``) row that make a :class:`StoredResource`
RESOURCE_COLUMNS = ("type", "id", "version_id", "last_updated", "deleted", "content", "body")
#: row classes whose getters are kept at most (the cursor makes one per compiled shape)
MAX_ROW_CLASSES = 256
#: a cursor row class → the ``itemgetter`` of its :data:`RESOURCE_COLUMNS` (a class per statement shape)
_COLUMN_GETTERS: dict[type[Row], Callable[[Row], tuple[Any, ...]]] = {}


def _columns(row: Any) -> tuple[Any, ...]:
    """A resource row's :data:`RESOURCE_COLUMNS`, in that order: by position, with one ``itemgetter`` per
    row class, for the cursor's rows (``row._mapping`` builds a dict per row: a third of ``_stored``), by
    name for SQLAlchemy's."""
    kind = type(row)
    getter = _COLUMN_GETTERS.get(kind)
    if getter is None:
        if not isinstance(row, Row):
            mapping = row._mapping
            return tuple(mapping[name] for name in RESOURCE_COLUMNS)
        if len(_COLUMN_GETTERS) >= MAX_ROW_CLASSES:
            _COLUMN_GETTERS.clear()  # the cursor's shapes were compiled again (see ``cursor.MAX_SHAPES``)
        getter = _COLUMN_GETTERS[kind] = operator.itemgetter(*(kind._index[name] for name in RESOURCE_COLUMNS))
    return getter(row)


def _stored(row: Any, *, shared: bool = False) -> StoredResource:
    """A resource row; ``shared`` (the unit of work's reads): its content from :data:`_PARSED` when kept."""
    return _stored_columns(_columns(row), shared=shared)


def _stored_columns(columns: tuple[Any, ...], *, shared: bool = False) -> StoredResource:
    """:func:`_stored` of a row's :func:`_columns`."""
    rtype, rid, version, updated, deleted, text, body = columns
    raw = None if body is None else bytes(body)
    content = _PARSED.get(raw) if shared and raw is not None else None
    if content is None:
        content = orjson.loads(_text(text, raw))  # from ``content`` for rows written before 0004
        if shared and raw is not None:
            _PARSED.keep(raw, content)
    return _resource(
        rtype,
        rid,
        version_id=int(version),
        last_updated=utc(updated) or datetime.now(UTC),
        content=content,
        deleted=bool(deleted),
        columns=(text, raw),
    )


# -- subscriptions and outbox --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    id: str
    status: str
    topic: str
    endpoint: str
    channel_type: str
    payload_content: str
    headers: list[str]
    filters: list[JSON]
    secret: str
    events_since_start: int
    error: str | None
    created_at: datetime
    heartbeat_period: int | None = None
    timeout: int | None = None
    max_count: int | None = None
    last_sent_at: datetime | None = None
    #: ``backport`` or ``nde``: which payload builder and target the worker uses (same outbox, same order).
    dialect: str = "backport"
    start_at: datetime | None = None
    end_at: datetime | None = None
    #: the platform client that created it; empty before clients existed (#13)
    owner: str = ""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    id: int
    subscription_id: str
    event_number: int
    notification_type: str
    topic: str
    focus_type: str | None
    focus_id: str | None
    focus_version: int | None
    context: list[JSON]
    occurred_at: datetime
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    retry_since: datetime | None = None


#: Bumped by every subscription written in this process, at the write and again at its commit, so that
#: the listening registry (``gateway/db/unit.py``) reads them again at once: one that re-read between the two
#: (on PostgreSQL, from another connection) did not see the row yet. Other processes' writes are seen when
#: the registry's read expires.
_subscription_changes = [0]
_changes_lock = threading.Lock()


def subscription_generation() -> int:
    """How many subscription writes this process has made (a generation, compared, never shown)."""
    return _subscription_changes[0]


def _bump(*_: Any) -> None:
    with _changes_lock:
        _subscription_changes[0] += 1


def _subscriptions_changed(conn: Connection) -> None:
    """Bumped now, and again when the transaction ends: at its commit (see above), or at its rollback, for a
    registry that read the row uncommitted in this very transaction (it would otherwise keep it until its
    read expires)."""
    _bump()
    event.listen(conn, "commit", _bump, once=True)
    event.listen(conn, "rollback", _bump, once=True)


class SubscriptionRepo:
    """Subscriptions; built with an ``owner`` (a platform's client id), :meth:`get` finds only its own.

    Every write tells the listening registry (see :func:`subscription_generation`)."""

    def __init__(self, conn: Connection, *, owner: str | None = None) -> None:
        self.conn = conn
        self.owner = owner

    @staticmethod
    def _settable(record: SubscriptionRecord) -> dict[str, Any]:
        """The columns a platform sets (the event counter and creation time are the gateway's)."""
        return {
            "status": record.status,
            "topic": record.topic,
            "endpoint": record.endpoint,
            "channel_type": record.channel_type,
            "payload_content": record.payload_content,
            "headers": dumps(record.headers),
            "filters": dumps(record.filters),
            "secret": record.secret,
            "error": record.error,
            "heartbeat_period": record.heartbeat_period,
            "timeout": record.timeout,
            "max_count": record.max_count,
            "dialect": record.dialect,
            "start_at": record.start_at,
            "end_at": record.end_at,
        }

    def add(self, record: SubscriptionRecord) -> None:
        _subscriptions_changed(self.conn)
        self.conn.execute(
            insert(subscriptions).values(
                id=record.id,
                events_since_start=record.events_since_start,
                created_at=record.created_at,
                owner=record.owner,
                **self._settable(record),
            )
        )

    def update(self, record: SubscriptionRecord) -> None:
        """Replace what a platform may change (never the event counter)."""
        _subscriptions_changed(self.conn)
        self.conn.execute(update(subscriptions).where(subscriptions.c.id == record.id).values(**self._settable(record)))

    def delete(self, sub_id: str) -> None:
        _subscriptions_changed(self.conn)
        self.conn.execute(delete(outbox).where(outbox.c.subscription_id == sub_id, outbox.c.status != "delivered"))
        self.conn.execute(delete(subscriptions).where(subscriptions.c.id == sub_id))

    def sent(self, sub_id: str, *, now: datetime) -> None:
        """Statement built once: the delivery worker's hot path."""
        run(self.conn, _SUBSCRIPTION_SENT, {"sub_id": sub_id, "now": now})

    def with_heartbeat(self) -> list[SubscriptionRecord]:
        rows = self.conn.execute(
            select(subscriptions).where(
                subscriptions.c.status == "active", subscriptions.c.heartbeat_period.is_not(None)
            )
        )
        return [_subscription(r) for r in rows]

    def all(self) -> list[SubscriptionRecord]:
        query = select(subscriptions).order_by(subscriptions.c.id)
        if self.owner is not None:
            query = query.where(subscriptions.c.owner == self.owner)
        return [_subscription(r) for r in self.conn.execute(query)]

    def get(self, sub_id: str) -> SubscriptionRecord | None:
        """Unowned (the delivery worker's hot path) with a statement built once; a platform's, filtered."""
        if self.owner is None:
            row = self.conn.execute(_SUBSCRIPTION_BY_ID, {"sub_id": sub_id}).first()
        else:
            query = select(subscriptions).where(subscriptions.c.id == sub_id, subscriptions.c.owner == self.owner)
            row = self.conn.execute(query).first()
        return _subscription(row) if row else None

    def get_many(self, sub_ids: Iterable[str]) -> dict[str, SubscriptionRecord]:
        """The subscriptions of a claim, by id, in one query (those deleted meanwhile are absent)."""
        wanted = sorted(set(sub_ids))
        if not wanted:
            return {}
        query = select(subscriptions).where(subscriptions.c.id.in_(wanted))
        if self.owner is not None:
            query = query.where(subscriptions.c.owner == self.owner)
        return {sub.id: sub for sub in map(_subscription, self.conn.execute(query))}

    def listening(self, topic: str, *, now: datetime | None = None) -> list[SubscriptionRecord]:
        """Subscriptions that record events for ``topic``.

        Requested ones queue them behind the handshake; those in error keep recording them (undelivered,
        readable through ``$events``) so that nothing is missed once the platform is back. Only ``off``
        subscriptions record nothing, and, given ``now``, none outside their validity (start, ``end``).
        """
        if now is None:
            return [_subscription(r) for r in run(self.conn, _LISTENING, {"topic": topic})]
        return [_subscription(r) for r in run(self.conn, _LISTENING_AT, {"topic": topic, "now": now})]

    def listening_by_topic(self, *, now: datetime | None = None) -> dict[str, list[SubscriptionRecord]]:
        """:meth:`listening` for every topic at once: topic URL → subscriptions, ordered by id."""
        out: dict[str, list[SubscriptionRecord]] = {}
        rows = run(self.conn, _LISTENING_ALL, {}) if now is None else run(self.conn, _LISTENING_ALL_AT, {"now": now})
        for row in rows:
            record = _subscription(row)
            out.setdefault(record.topic, []).append(record)
        return out

    def ended(self, *, now: datetime) -> list[str]:
        """Subscriptions whose ``end`` has come and that are not ``off`` yet."""
        rows = self.conn.execute(
            select(subscriptions.c.id).where(subscriptions.c.end_at <= now, subscriptions.c.status != "off")
        )
        return [str(r[0]) for r in rows]

    def set_status(self, sub_id: str, status: str, *, error: str | None = None) -> None:
        _subscriptions_changed(self.conn)
        self.conn.execute(update(subscriptions).where(subscriptions.c.id == sub_id).values(status=status, error=error))

    def next_event_number(self, sub_id: str) -> int:
        """Increment and return the subscription's counter; the row lock keeps numbers gapless.

        A subscription another instance deleted since the listening registry read it has no row left: the
        registry is told to read again and the message is applied again (:class:`StorageConflictError`)."""
        row = run(self.conn, _NEXT_EVENT_NUMBER, {"sub_id": sub_id}).first()
        if row is None:
            _bump()
            raise StorageConflictError("a subscription was deleted meanwhile (another instance)")
        return int(row[0])


def _subscription(row: Any) -> SubscriptionRecord:
    m = row._mapping
    return SubscriptionRecord(
        id=m["id"],
        status=m["status"],
        topic=m["topic"],
        endpoint=m["endpoint"],
        channel_type=m["channel_type"],
        payload_content=m["payload_content"],
        headers=orjson.loads(m["headers"]),
        filters=orjson.loads(m["filters"]),
        secret=m["secret"],
        events_since_start=int(m["events_since_start"]),
        error=m["error"],
        created_at=utc(m["created_at"]) or datetime.now(UTC),
        heartbeat_period=m["heartbeat_period"],
        timeout=m["timeout"],
        max_count=m["max_count"],
        last_sent_at=utc(m["last_sent_at"]),
        dialect=m["dialect"] or "backport",
        start_at=utc(m["start_at"]),
        end_at=utc(m["end_at"]),
        owner=m["owner"],
    )


_PENDING = outbox.alias("pending_row")
#: Each listening subscription's head: its oldest pending row that its status lets out. One index probe
#: per subscription (``ix_outbox_due``, stopping at the first eligible row), never a scan of the backlog:
#: a ``GROUP BY`` over every pending row cost 70 ms per claim with 100,000 events queued.
_HEAD_IDS = select(
    select(_PENDING.c.id)
    .where(
        _PENDING.c.status == "pending",
        _PENDING.c.subscription_id == subscriptions.c.id,
        or_(
            and_(subscriptions.c.status == "requested", _PENDING.c.notification_type == "handshake"),
            and_(subscriptions.c.status == "active", _PENDING.c.notification_type != "handshake"),
        ),
    )
    .order_by(_PENDING.c.id)
    .limit(1)
    .correlate(subscriptions)
    .scalar_subquery()
).where(subscriptions.c.status.in_(("requested", "active")))


def _due(table: Any) -> tuple[Any, Any]:
    """``table``'s row is pending and due. Looked up by id (its head id) already, so the status test is
    written ``status || '' = 'pending'``: SQLite, with no statistics, would otherwise walk
    ``ix_outbox_due`` over every pending row (100,000 of them behind a backlog) instead of fetching the
    few ids. On PostgreSQL it is what a row locked after a concurrent commit is checked against again."""
    return (table.c.status.concat("") == "pending", table.c.next_attempt_at <= bindparam("now"))


_DUE = _due(outbox)
_CANDIDATE = outbox.alias("candidate")
_CLAIM_HEADS = (
    update(outbox)
    .where(
        outbox.c.id.in_(
            select(_CANDIDATE.c.id)
            .where(_CANDIDATE.c.id.in_(_HEAD_IDS), *_due(_CANDIDATE))
            .order_by(_CANDIDATE.c.next_attempt_at, _CANDIDATE.c.id)
            .limit(bindparam("limit", type_=Integer))
            .with_for_update(skip_locked=True, of=_CANDIDATE)
        ),
        *_DUE,
    )
    .values(next_attempt_at=bindparam("lease_until"))
    .returning(*outbox.c)
)
_ANY_DUE = select(outbox.c.id).where(outbox.c.id.in_(_HEAD_IDS), *_DUE).limit(1)
#: The head of one subscription, leased as :data:`_CLAIM_HEADS` does: the worker's next job for a
#: subscription whose previous one it has just recorded, in the same transaction.
_CLAIM_HEAD_OF = (
    update(outbox)
    .where(
        outbox.c.id.in_(
            select(_CANDIDATE.c.id)
            .where(_CANDIDATE.c.id.in_(_HEAD_IDS.where(subscriptions.c.id == bindparam("sub_id"))), *_due(_CANDIDATE))
            .with_for_update(skip_locked=True, of=_CANDIDATE)
        ),
        *_DUE,
    )
    .values(next_attempt_at=bindparam("lease_until"))
    .returning(*outbox.c)
)
_CLAIM_FOLLOWING = (
    update(outbox)
    .where(
        outbox.c.id.in_(
            select(outbox.c.id)
            .where(
                outbox.c.subscription_id == bindparam("sub_id"),
                outbox.c.status == "pending",
                outbox.c.notification_type == "event-notification",
                outbox.c.id > bindparam("head_id"),
            )
            .order_by(outbox.c.id)
            .limit(bindparam("limit", type_=Integer))
        )
    )
    .values(next_attempt_at=bindparam("lease_until"))
    .returning(*outbox.c)
)

#: A run of rows sent one notification after another, recorded in one statement (the worker's runs).
_DELIVERED = (
    update(outbox)
    .where(outbox.c.id.in_(bindparam("ids", expanding=True)))
    .values(status="delivered", delivered_at=bindparam("now"), attempts=outbox.c.attempts + 1, last_error=None)
)
#: Leased rows of a run that were not sent (a failure before them, a stop, the run's time up): due again
#: at once, so that whichever becomes the head goes out next, not after its lease.
_RELEASE = (
    update(outbox).where(outbox.c.id.in_(bindparam("ids", expanding=True))).values(next_attempt_at=bindparam("at"))
)
_SUBSCRIPTION_SENT = (
    update(subscriptions).where(subscriptions.c.id == bindparam("sub_id")).values(last_sent_at=bindparam("now"))
)
_SUBSCRIPTION_BY_ID = select(subscriptions).where(subscriptions.c.id == bindparam("sub_id"))


class OutboxRepo:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(
        self,
        *,
        subscription_id: str,
        event_number: int,
        notification_type: str,
        topic: str,
        occurred_at: datetime,
        focus: tuple[str, str, int] | None = None,
        context: list[JSON] | None = None,
    ) -> None:
        run(
            self.conn,
            _INSERT_OUTBOX,
            {
                "subscription_id": subscription_id,
                "event_number": event_number,
                "notification_type": notification_type,
                "topic": topic,
                "focus_type": focus[0] if focus else None,
                "focus_id": focus[1] if focus else None,
                "focus_version": focus[2] if focus else None,
                "context": dumps(context or []),
                "occurred_at": occurred_at,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": occurred_at,
            },
        )

    def add_many(
        self,
        *,
        subscription_id: str,
        topic: str,
        focus: tuple[str, str, int],
        context: list[JSON],
        occurred_at: datetime,
        event_numbers: Iterable[int],
    ) -> None:
        """Queue one event per number, in one executemany (a backlog built in bulk, for the benchmarks)."""
        row = {
            "subscription_id": subscription_id,
            "notification_type": "event-notification",
            "topic": topic,
            "focus_type": focus[0],
            "focus_id": focus[1],
            "focus_version": focus[2],
            "context": dumps(context),
            "occurred_at": occurred_at,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": occurred_at,
        }
        rows = [{**row, "event_number": number} for number in event_numbers]
        if rows:
            self.conn.execute(_INSERT_OUTBOX, rows)

    def claim_heads(self, *, now: datetime, lease_until: datetime, limit: int) -> list[OutboxRecord]:
        """Lease up to ``limit`` due heads in one statement, oldest due first.

        A head is the oldest pending row of a subscription: a later event never overtakes an earlier one,
        as nothing behind a head waiting for its retry is due. A ``requested`` subscription has only its
        handshake due, an ``active`` one everything but handshakes, one in ``error`` or ``off`` nothing.

        On PostgreSQL the heads are locked ``FOR UPDATE SKIP LOCKED``: two workers claiming at once take
        different rows, and a row another worker is recording is skipped (it is looked at again on the
        next pass, re-checked as pending and due). SQLite has one writer: the statement is atomic as is.
        """
        rows = self.conn.execute(_CLAIM_HEADS, {"now": now, "limit": limit, "lease_until": lease_until})
        return sorted((_outbox(r) for r in rows), key=lambda r: (r.next_attempt_at, r.id))

    def any_due(self, *, now: datetime) -> bool:
        """Whether :meth:`claim_heads` would lease anything: a read, so that a worker with nothing to do
        (every head leased, or waiting for its retry) takes no write transaction."""
        return self.conn.execute(_ANY_DUE, {"now": now}).first() is not None

    def claim_head_of(self, sub_id: str, *, now: datetime, lease_until: datetime) -> OutboxRecord | None:
        """Lease the head of one subscription if it is due (see :meth:`claim_heads`), in one statement."""
        params = {"sub_id": sub_id, "now": now, "lease_until": lease_until}
        row = self.conn.execute(_CLAIM_HEAD_OF, params).first()
        return _outbox(row) if row else None

    def claim_following(self, head: OutboxRecord, *, lease_until: datetime, limit: int) -> list[OutboxRecord]:
        """Lease the pending events right behind a claimed ``head`` (one notification, ``maxCount``).

        No row behind a leased head can be claimed by anyone else (it is not a head), so no lock is skipped
        here: skipping one would let a later event go out before it.
        """
        params = {"sub_id": head.subscription_id, "head_id": head.id, "limit": limit, "lease_until": lease_until}
        return sorted((_outbox(r) for r in self.conn.execute(_CLAIM_FOLLOWING, params)), key=lambda r: r.id)

    def extend_lease(self, row_ids: Sequence[int], *, lease_until: datetime) -> None:
        """A subscription with its own, longer, timeout keeps its rows leased past it (same transaction)."""
        self.conn.execute(update(outbox).where(outbox.c.id.in_(list(row_ids))).values(next_attempt_at=lease_until))

    def drop_handshakes(self, sub_id: str) -> None:
        """Once a handshake succeeded, older queued handshakes of the subscription are moot."""
        self.conn.execute(
            delete(outbox).where(
                outbox.c.subscription_id == sub_id,
                outbox.c.notification_type == "handshake",
                outbox.c.status == "pending",
            )
        )

    def has_pending(self, sub_id: str) -> bool:
        query = select(outbox.c.id).where(outbox.c.subscription_id == sub_id, outbox.c.status == "pending").limit(1)
        return self.conn.execute(query).first() is not None

    def delivered(self, row_ids: Sequence[int], *, now: datetime) -> None:
        """Rows sent and answered 2xx, in one statement built once (the delivery worker's hot path)."""
        if row_ids:
            self.conn.execute(_DELIVERED, {"ids": list(row_ids), "now": now})

    def release(self, row_ids: Sequence[int], *, now: datetime) -> None:
        """Leased rows that were not sent are due again at ``now`` (still behind their head, in order)."""
        if row_ids:
            self.conn.execute(_RELEASE, {"ids": list(row_ids), "at": now})

    def failed(self, row_id: int, *, error: str, next_attempt_at: datetime, now: datetime) -> None:
        """Record a failed attempt; the row stays pending, due again at ``next_attempt_at``."""
        self.conn.execute(
            update(outbox)
            .where(outbox.c.id == row_id)
            .values(
                attempts=outbox.c.attempts + 1,
                last_error=error[:500],
                next_attempt_at=next_attempt_at,
                retry_since=func.coalesce(outbox.c.retry_since, now),
            )
        )

    def for_subscription(self, sub_id: str, *, statuses: Sequence[str] | None = None) -> list[OutboxRecord]:
        query = select(outbox).where(outbox.c.subscription_id == sub_id).order_by(outbox.c.id)
        if statuses:
            query = query.where(outbox.c.status.in_(statuses))
        return [_outbox(r) for r in self.conn.execute(query)]

    def events(self, sub_id: str, *, since: int, until: int | None) -> list[OutboxRecord]:
        query = select(outbox).where(
            outbox.c.subscription_id == sub_id,
            outbox.c.notification_type == "event-notification",
            outbox.c.event_number >= since,
        )
        if until is not None:
            query = query.where(outbox.c.event_number <= until)
        return [_outbox(r) for r in self.conn.execute(query.order_by(outbox.c.event_number))]

    def requeue(self, sub_id: str, *, now: datetime) -> int:
        """Make the waiting rows due now, with a fresh retry budget (the platform is back)."""
        result = self.conn.execute(
            update(outbox)
            .where(outbox.c.subscription_id == sub_id, outbox.c.status == "pending")
            .values(next_attempt_at=now, retry_since=None, attempts=0)
        )
        return int(result.rowcount)


def _outbox(row: Any) -> OutboxRecord:
    m = row._mapping
    return OutboxRecord(
        id=int(m["id"]),
        subscription_id=m["subscription_id"],
        event_number=int(m["event_number"]),
        notification_type=m["notification_type"],
        topic=m["topic"],
        focus_type=m["focus_type"],
        focus_id=m["focus_id"],
        focus_version=m["focus_version"],
        context=orjson.loads(m["context"]),
        occurred_at=utc(m["occurred_at"]) or datetime.now(UTC),
        status=m["status"],
        attempts=int(m["attempts"]),
        next_attempt_at=utc(m["next_attempt_at"]) or datetime.now(UTC),
        last_error=m["last_error"],
        retry_since=utc(m["retry_since"]),
    )
