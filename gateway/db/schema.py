"""Table definitions (SQLAlchemy Core). Alembic migrations create them; nothing else defines SQL shape."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from gateway.db.indexing import id_key, id_of, reference_byte, value_key, value_of
from gateway.mapping.ids import MEMO_LONGEST

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY


class HexDigest(TypeDecorator[str]):
    """A SHA-256 as the code reads it (64 hex digits), stored as its 32 bytes (since 0009): ``bytea`` on
    PostgreSQL; on SQLite the declared type stays text, which keeps a BLOB as it is given, and a row
    still holding hex text is read as it is."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(LargeBinary() if dialect.name == "postgresql" else String(64))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else bytes.fromhex(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return bytes(value).hex()


#: Every message received, whatever its outcome: the raw bytes are the source of truth and replayable.
#: Since 0006 new rows keep them (and the ACK) deflated in ``body``, ``raw`` left empty.
messages = Table(
    "messages",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("transport", String(16), nullable=False),
    Column("sending_application", String(255), nullable=False, default=""),
    Column("sending_facility", String(255), nullable=False, default=""),
    Column("control_id", String(255), nullable=False, default=""),
    Column("message_type", String(16), nullable=False, default=""),
    Column("trigger_event", String(16), nullable=False, default=""),
    Column("event_time", DateTime(timezone=True), nullable=True),
    Column("content_sha256", HexDigest(), nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("outcome", String(2), nullable=False),
    Column("status", String(16), nullable=False),  # applied | duplicate | rejected | error | replayed
    Column("error_code", String(16), nullable=True),
    Column("error_text", Text, nullable=True),
    Column("ack", Text, nullable=True),
    Column("duplicate_of", ID, nullable=True),
    #: ``raw`` and ``ack`` deflated together (gateway/db/bodies.py, codec MESSAGES); rows written before
    #: 0006_compact_store have none and keep both in their own columns, read as they are
    Column("body", LargeBinary, nullable=True),
    Index("ix_messages_outcome", "outcome"),
    # At most one applied message per sender and control id, even with several gateway instances: the
    # loser of a race fails on this index, retries, and then sees the winner as a duplicate. It is also
    # the duplicate check's lookup (the applied message of a sender key), the only query by that key: no
    # other index on it since 0007.
    Index(
        "uq_messages_applied",
        "sending_application",
        "sending_facility",
        "control_id",
        unique=True,
        sqlite_where=text("status = 'applied'"),
        postgresql_where=text("status = 'applied'"),
    ),
)

#: The longest sender key each ``messages`` column holds; the pipeline refuses longer ones before storage
#: (a key stored cut and looked up whole would never be found again as a duplicate).
MESSAGE_KEY_LENGTHS: dict[str, int] = {
    name: int(getattr(messages.c[name].type, "length", 0) or 0)
    for name in ("sending_application", "sending_facility", "control_id")
}

#: Current version of each FHIR resource (JSON text, serialized with orjson).
resources = Table(
    "resources",
    metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Integer, nullable=False, default=0),
    # the JSON text of rows written before 0004_bodies; newer rows leave it empty and fill ``body``
    Column("content", Text, nullable=False),
    #: the resource deflated (gateway/db/bodies.py), most of the store's bytes otherwise
    Column("body", LargeBinary, nullable=True),
)

#: The versions that were replaced, for ``_history`` and ``vread``; the current one is only in ``resources``
#: (since 0008_versions_replaced), so that each body is stored once.
resource_versions = Table(
    "resource_versions",
    metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Integer, nullable=False, default=0),
    # the JSON text of rows written before 0004_bodies; newer rows leave it empty and fill ``body``
    Column("content", Text, nullable=False),
    #: the resource deflated (gateway/db/bodies.py), most of the store's bytes otherwise
    Column("body", LargeBinary, nullable=True),
)


class _Compact(TypeDecorator[str]):
    """Text in the code, and on SQLite; on PostgreSQL the column is ``bytea`` holding the text's compact
    form (``gateway/db/indexing.py``): SQLite keeps text, whose joins with ``resources.id`` need no
    conversion (it has no ``decode(…, 'hex')``), and its store met the target before."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length

    @staticmethod
    def _key(value: str) -> bytes:
        raise NotImplementedError

    @staticmethod
    def _text(key: bytes) -> str:
        raise NotImplementedError

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(LargeBinary() if dialect.name == "postgresql" else String(self.length))

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "postgresql":
            return None
        key, known = self._key, _KNOWN[type(self)]

        def keyed(value: str | None) -> bytes | None:  # bytes go to psycopg as bytea as they are
            if value is None:
                return None
            return known(value) if len(value) <= MEMO_LONGEST else key(value)

        return keyed

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "postgresql":
            return None
        decoded = self._text
        return lambda value: None if value is None else decoded(bytes(value))


class IndexId(_Compact):
    """``search_index.id``: on PostgreSQL 16 bytes for a deterministic id, 24 for a PractitionerRole's
    (:func:`gateway.db.indexing.id_key`)."""

    cache_ok = True

    @staticmethod
    def _key(value: str) -> bytes:
        return id_key(value)

    @staticmethod
    def _text(key: bytes) -> str:
        return id_of(key)


class IndexValue(_Compact):
    """``search_index.value``: on PostgreSQL 17 bytes for a reference to a deterministic id (25 to a
    PractitionerRole's) (:func:`gateway.db.indexing.value_key`)."""

    cache_ok = True

    @staticmethod
    def _key(value: str) -> bytes:
        return value_key(value)

    @staticmethod
    def _text(key: bytes) -> str:
        return value_of(key)


#: each type's keying, memoized: a message binds each of its ids and references several times
_KNOWN: dict[type[_Compact], Any] = {
    IndexId: lru_cache(maxsize=2048)(id_key),
    IndexValue: lru_cache(maxsize=2048)(value_key),
}


class index_id(FunctionElement[Any]):
    """``search_index.id`` as it holds a ``resources.id`` expression (a correlated probe of the index)."""

    inherit_cache = True
    name = "index_id"


class index_id_text(FunctionElement[Any]):
    """The ``resources.id`` a ``search_index.id`` expression holds (``resources.id IN (…)``)."""

    type = String()
    inherit_cache = True
    name = "index_id_text"


class index_reference(FunctionElement[Any]):
    """The ``search_index.value`` of a reference to ``Type/<the id>`` from a ``search_index.id``
    expression; the type is the first argument, a literal string."""

    inherit_cache = True
    name = "index_reference"


@compiles(index_id)
@compiles(index_id_text)
def _id_as_is(element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(next(iter(element.clauses)), **kw)


@compiles(index_reference)
def _reference_as_text(element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    rtype, rid = list(element.clauses)
    return f"({compiler.process(rtype, **kw)} || '/' || {compiler.process(rid, **kw)})"


#: PostgreSQL's ``convert_to`` / ``convert_from`` are STABLE (they read the server's encoding), and an
#: ``IN`` over a stable expression made the planner scan a type's resources instead of probing them by
#: id: 0009 wraps them in IMMUTABLE functions (the database's encoding never changes under a store).
PG_FUNCTIONS = {
    "gateway_utf8(text)": "RETURNS bytea AS $$ SELECT convert_to($1, 'UTF8') $$",
    "gateway_text(bytea)": "RETURNS text AS $$ SELECT convert_from($1, 'UTF8') $$",
}


@compiles(index_id, "postgresql")
def _pg_index_id(element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    """:func:`gateway.db.indexing.id_key` in SQL."""
    x = compiler.process(next(iter(element.clauses)), **kw)
    return (
        f"(CASE WHEN {x} ~ '^[0-9a-f]{{32}}$' THEN decode({x}, 'hex')"
        f" WHEN {x} ~ '^[0-9a-f]{{32}}-[0-9a-f]{{16}}$' THEN decode(replace({x}, '-', ''), 'hex')"
        f" WHEN octet_length({x}) IN (16, 24) THEN gateway_utf8({x}) || '\\xff'::bytea"
        f" ELSE gateway_utf8({x}) END)"
    )


def _pg_id_text(x: str) -> str:
    """:func:`gateway.db.indexing.id_of` in SQL."""
    return (
        f"(CASE WHEN length({x}) = 16 THEN encode({x}, 'hex')"
        f" WHEN length({x}) = 24 THEN encode(substring({x} from 1 for 16), 'hex') || '-'"
        f" || encode(substring({x} from 17), 'hex')"
        f" WHEN get_byte({x}, length({x}) - 1) = 255"
        f" THEN gateway_text(substring({x} from 1 for length({x}) - 1))"
        f" ELSE gateway_text({x}) END)"
    )


@compiles(index_id_text, "postgresql")
def _pg_index_id_text(element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    return _pg_id_text(compiler.process(next(iter(element.clauses)), **kw))


@compiles(index_reference, "postgresql")
def _pg_index_reference(element: Any, compiler: SQLCompiler, **kw: Any) -> str:
    """:func:`gateway.db.indexing.value_key` of ``Type/<id>`` in SQL."""
    rtype_clause, rid = list(element.clauses)
    rtype = str(rtype_clause.value)
    x = compiler.process(rid, **kw)
    return (
        f"(CASE WHEN length({x}) IN (16, 24) THEN '\\x{reference_byte(rtype):02x}'::bytea || {x}"
        f" ELSE gateway_utf8('{rtype}/' || {_pg_id_text(x)}) END)"
    )


#: Search parameters of current versions, one row per (parameter, value) a resource is found by.
#: The primary key is the lookup itself, and on SQLite the table is ``WITHOUT ROWID``: the rows are
#: stored once, in the lookup's order, instead of a table plus two indexes (48 % of the store before
#: 0006). There is no index by owner: a write deletes exactly the entries of the version it replaces,
#: recomputed from that version (``ResourceRepo._reindex``).
#:
#: ``code`` is the (type, parameter) pair (``gateway/db/indexing.py`` ``PARAM_CODES``); on PostgreSQL
#: ``id`` and ``value`` are stored compactly (:class:`IndexId`, :class:`IndexValue`), since 0009: the
#: index was 58 % of a PostgreSQL store, 274 bytes an entry.
#:
#: A date parameter (``gateway/db/indexing.py`` ``DATE_PARAMS``) is only ever compared for a resource
#: already found (``CareTeam?date=ge…`` beside other criteria, ``_sort=date``), never looked up by its
#: instant: its ``value`` is empty and the instant is in ``system``, so that (code, '', id) is a
#: key prefix and the comparison a probe on it.
search_index = Table(
    "search_index",
    metadata,
    Column("code", SmallInteger, primary_key=True, autoincrement=False),
    Column("value", IndexValue(255), primary_key=True),  # empty for a date parameter
    Column("id", IndexId(64), primary_key=True),
    Column("system", String(255), primary_key=True, default=""),  # a token's system; a date's instant
    sqlite_with_rowid=False,
)

#: Facts extracted from messages, per stream ("Encounter/<id>", "Patient/<id>"). Resources are folds
#: of their stream sorted by event time, which makes the result independent of arrival order.
facts = Table(
    "facts",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("stream", String(160), nullable=False),
    Column("message_id", ID, nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # rows before 0004_bodies; newer ones leave it empty
    Column("body", LargeBinary, nullable=True),  # the payload deflated (gateway/db/bodies.py)
    # every query is by stream, ordered by id: SQLite's entries end with the rowid (``id``), so they come
    # in order; PostgreSQL keeps one key per stream and a list of rows (0007)
    Index("ix_facts_stream", "stream"),
)

#: A40 merges (and A47 IPP changes): the merged patient points at its survivor. Stays, filters and
#: care circles of a merged patient follow the survivor through this table.
patient_links = Table(
    "patient_links",
    metadata,
    Column("merged_id", String(64), primary_key=True),
    Column("survivor_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: Subscriptions' delivery state beside their FHIR resource (stored in ``resources``).
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("channel_type", String(16), nullable=False, default="rest-hook"),
    Column("payload_content", String(16), nullable=False),
    Column("headers", Text, nullable=False, default="[]"),
    Column("filters", Text, nullable=False, default="[]"),
    Column("secret", String(128), nullable=False),
    Column("events_since_start", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_period", Integer, nullable=True),  # seconds (backport-heartbeat-period)
    Column("timeout", Integer, nullable=True),  # seconds per request (backport-timeout)
    Column("max_count", Integer, nullable=True),  # events per notification (backport-max-count)
    Column("last_sent_at", DateTime(timezone=True), nullable=True),
    # What the platform speaks: "backport" (History Bundles) or "nde" (ANS NdE CommunicationRequests).
    Column("dialect", String(16), nullable=False, server_default="backport"),
    Column("start_at", DateTime(timezone=True), nullable=True),  # NdE Start: no event before it
    Column("end_at", DateTime(timezone=True), nullable=True),  # Subscription.end: off from then on
    #: the platform client that created it (#13); empty for subscriptions made before clients existed
    Column("owner", String(64), nullable=False, default="", server_default=""),
    Index("ix_subscriptions_owner", "owner"),
)

#: Transactional outbox: written in the ingest transaction, drained by the delivery worker in order.
outbox = Table(
    "outbox",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("subscription_id", String(64), nullable=False),
    Column("event_number", BigInteger, nullable=False),  # 0 for handshakes and heartbeats
    Column("notification_type", String(32), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("focus_type", String(64), nullable=True),
    Column("focus_id", String(64), nullable=True),
    Column("focus_version", Integer, nullable=True),
    Column("context", Text, nullable=False, default="[]"),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("retry_since", DateTime(timezone=True), nullable=True),  # first failure since (re)queued
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Index("ix_outbox_due", "status", "subscription_id", "id"),
)

#: Registered clients (#13): platforms, senders (hospital engines) and operators. Secrets are stored as
#: scrypt hashes only; JWKS-registered clients authenticate with signed assertions and have none.
clients = Table(
    "clients",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # platform | sender | operator
    Column("name", String(128), nullable=False, unique=True),
    Column("secret_hash", String(255), nullable=True),
    Column("jwks", Text, nullable=True),
    Column("scopes", Text, nullable=False, default=""),  # space-separated, as OAuth writes them
    Column("facilities", Text, nullable=False, default="[]"),  # MSH-4 values a sender may claim
    Column("authorities", Text, nullable=False, default="{}"),  # assigning authority -> identifier system
    Column("status", String(16), nullable=False, default="active"),  # active | revoked
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("rotated_at", DateTime(timezone=True), nullable=True),
)

#: The access-token signing key, shared by every gateway instance on the same database.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("secret", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: ``jti`` of client assertions already used (private_key_jwt): a replay hits the primary key.
client_assertions = Table(
    "client_assertions",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

#: Audit trail of access to patient data (read as FHIR AuditEvent by operators).
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("client_name", String(128), nullable=False),
    Column("action", String(1), nullable=False),  # FHIR AuditEvent.action: C R U D E
    Column("subtype", String(32), nullable=False),  # read | vread | history-instance | search-type | notify | ...
    Column("entity", String(160), nullable=False),  # Type/id, or Type for a search
    Column("patient", String(64), nullable=True),  # Patient id the access concerns
    Column("outcome", String(2), nullable=False),  # AuditEvent.outcome: 0 success, 4 minor failure, 8 serious
    Column("detail", Text, nullable=True),
    Index("ix_audit_patient", "patient", "recorded_at"),
    Index("ix_audit_client", "client_id", "recorded_at"),
    Index("ix_audit_recorded", "recorded_at"),
)

#: Browser sessions of the pages (``/sign-in``): kept here so that every instance on one database serves the
#: same browser. The cookie's id is stored only as its SHA-256 (a database dump opens no session).
browser_sessions = Table(
    "browser_sessions",
    metadata,
    Column("id_sha256", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_browser_sessions_expires_at", "expires_at"),
)
