"""Engine creation and schema migration; the SQLite pragmas that make the embedded store durable."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InvalidatePoolError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import LRUCache

from gateway.config import Settings
from gateway.db.schema import metadata
from gateway.errors import ConfigError, StartupError, StorageConflictError, StorageError, StorageUnavailableError
from gateway.metrics import COMMIT_SECONDS, timed

logger = logging.getLogger(__name__)

#: The engine type as the layers above ``db/`` name it, so that they need not import SQLAlchemy.
Database = Engine
#: Likewise for a connection (an open transaction, as ``transaction`` and ``reading`` yield it).
DbConnection = Connection

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def first_line(exc: BaseException) -> str:
    """A driver error's first line, without SQLAlchemy's background link: enough to act on."""
    origin = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(origin).splitlines() if line.strip()]
    return lines[0] if lines else type(origin).__name__


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def safe_url(url: str) -> str:
    """The URL for messages: password hidden, and never a traceback for a malformed one."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            "GATEWAY_DATABASE_URL is not a database URL (expected sqlite:///path or postgresql+psycopg://…)"
        ) from exc
    try:
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise ConfigError(f"GATEWAY_DATABASE_URL names an unknown database driver: {parsed.drivername}") from exc
    return parsed


def _sqlite_directory(database: str, data_dir: Path) -> None:
    """Create the store's directory only inside the data directory; elsewhere it must exist.

    A mistyped path (``sqlite:////data/gatway.db``) must fail, not start on a new, empty store.
    """
    folder = Path(database).parent.resolve()
    if folder.is_dir():
        return
    home = data_dir.resolve()
    if folder == home or home in folder.parents:
        folder.mkdir(parents=True, exist_ok=True)
        return
    raise ConfigError(
        f"SQLite directory {folder} does not exist (create it, or put the store under GATEWAY_DATA_DIR={home})"
    )


#: SQLAlchemy caches compiled statements per engine, and each throw-away store is a new engine: without a
#: shared cache every statement of every sandbox call is compiled again (most of a short call's time).
_THROWAWAY_COMPILED: LRUCache[Any, Any] = LRUCache(1000)


def throwaway_engine() -> Engine:
    """An in-memory store for one sandbox call, with the declared schema (``metadata``, which a test holds
    equal to the migrations' head): creating it is 20x faster than migrating."""
    engine = make_engine(Settings(database_url="sqlite://")).execution_options(compiled_cache=_THROWAWAY_COMPILED)
    metadata.create_all(engine)
    return engine


def make_engine(settings: Settings, *, quick_lock_retry: bool = False) -> Engine:
    """One engine per process. SQLite gets WAL, a busy timeout and the configured ``synchronous``.

    ``quick_lock_retry`` (SQLite): take the write lock by trying every millisecond rather than through
    SQLite's busy handler, for a writer in another process than ingest's (``gateway worker``: see
    :func:`_begin_retrying`). Nothing changes on PostgreSQL.
    """
    url = settings.database_url
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        in_memory = not database or database == ":memory:" or "mode=memory" in str(parsed.query)
        if not in_memory:
            _sqlite_directory(database or "", settings.data_dir)
        # An in-memory store lives in one connection: every session must share it (dry runs, sandbox).
        pool = {"poolclass": StaticPool} if in_memory else {}
        lock_timeout = settings.db_lock_timeout
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": lock_timeout}, **pool)
        synchronous = settings.sqlite_synchronous.upper()
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"GATEWAY_SQLITE_SYNCHRONOUS must be NORMAL, FULL or EXTRA, not {synchronous!r}")

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling defers BEGIN; take it over so that BEGIN IMMEDIATE
            # serializes writers up front instead of failing on lock upgrade.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            busy_ms = QUICK_BUSY_MS if quick_lock_retry else int(lock_timeout * 1000)
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        if quick_lock_retry:
            event.listen(engine, "begin", lambda conn: _begin_retrying(conn, limit=lock_timeout))
        else:
            event.listen(engine, "begin", _begin_immediate)
        return engine
    engine = create_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_timeout=settings.db_connect_timeout + settings.db_statement_timeout,
        connect_args=postgres_connect_args(settings) if make_url(url).get_backend_name() == "postgresql" else {},
    )
    ping_when_idle(engine)
    return engine


#: A pooled connection idle longer than this is pinged before it is handed out (see :func:`ping_when_idle`)
PING_IDLE_SECONDS = 1.0


def ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it sat idle over :data:`PING_IDLE_SECONDS`.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip per transaction (a
    ``sendto``, its ``poll`` and ``recvfrom``) on a connection that served a message a millisecond ago.
    A server restart, a backend killed or a connection dropped by a firewall shows on a connection left
    idle: that one is pinged as ``pool_pre_ping`` pings it, and on a disconnect the pool is invalidated and
    the checkout goes on with a new connection (``InvalidatePoolError``, as the pre-ping raises it). A
    connection lost while busy fails its statement instead, invalidated by the disconnect handler
    (``StorageUnavailableError``, retried by the caller), as it always did."""

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info.pop(_CHECKED_IN, None)  # a new connection needs no ping

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN)
        if since is not None and time.monotonic() - since > PING_IDLE_SECONDS:
            record.info.pop(_CHECKED_IN, None)
            if not engine.dialect._do_ping_w_event(dbapi_conn):
                raise InvalidatePoolError("the database dropped a connection left idle")


_CHECKED_IN = "gateway_checked_in"


def _begin_immediate(conn: Connection) -> None:
    driver_statement(conn, "BEGIN IMMEDIATE")


def driver_statement(conn: Connection, sql: str) -> None:
    """``conn.exec_driver_sql(sql)`` for a statement without parameters nor rows (``BEGIN IMMEDIATE``), straight
    on the DB-API cursor as :mod:`gateway.db.cursor` runs the hot path's statements: SQLAlchemy's execution
    layer (an execution context, a cursor result and its metadata) was a third of an empty transaction's
    CPU. What it guarantees is kept: the ``before_cursor_execute`` / ``after_cursor_execute`` listeners fire
    (the statement counts include BEGIN), and a driver error goes through the connection's own handler
    (wrapped into SQLAlchemy's tree, a disconnect invalidating the connection)."""
    dispatch = conn.dispatch
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for before in dispatch.before_cursor_execute:
            before(conn, cursor, sql, (), None, False)
        cursor.execute(sql)
        dispatch.after_cursor_execute(conn, cursor, sql, (), None, False)
    except BaseException as exc:
        driver = isinstance(exc, conn.dialect.loaded_dbapi.Error)
        conn._handle_dbapi_exception(exc, sql if driver else None, () if driver else None, cursor, None)
    finally:
        cursor.close()


#: Seconds between two tries of SQLite's write lock with ``make_engine(quick_lock_retry=True)``, and the busy
#: timeout it leaves SQLite's own handler (whose sleeps grow to 100 ms a try).
QUICK_RETRY_SECONDS = 0.001
QUICK_BUSY_MS = 2


def _begin_retrying(conn: Any, *, limit: float) -> None:
    """``BEGIN IMMEDIATE``, tried every :data:`QUICK_RETRY_SECONDS` for at most ``limit`` seconds.

    Between processes there is no fair lock, only SQLite's busy handler, which sleeps 1, 2, 5 … then
    50–100 ms between tries: a worker lost the lock to ingest's writer thread (which takes it again the
    instant it commits) so often that its claims waited hundreds of milliseconds and its backlog grew at
    50 msg/s. Trying every millisecond catches the gaps; the wait is still bounded by
    ``GATEWAY_DB_LOCK_TIMEOUT``.
    """
    deadline = time.monotonic() + limit
    while True:
        try:
            driver_statement(conn, "BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                raise
        time.sleep(QUICK_RETRY_SECONDS)


#: every statement planned for its parameters, prepared or not (see :func:`postgres_connect_args`)
PLAN_CACHE_MODE = "force_custom_plan"


def postgres_connect_args(settings: Settings) -> dict[str, Any]:
    """libpq time limits: a database that does not answer fails the request instead of holding it forever.

    And server-side prepared statements (psycopg prepares a statement after its 5th run: from then on each
    run sends only its parameters, and the server skips parsing it) without their trap: once prepared,
    PostgreSQL may switch to a generic plan, chosen once for any parameters, and on a fresh database it
    chose it while the tables were still empty (no ANALYZE yet): the stays lookup went from ~1 ms to
    seconds after a few hundred messages. ``plan_cache_mode=force_custom_plan`` keeps each run planned for
    its own parameters against the tables' real size, as an unprepared statement is.
    ``GATEWAY_DB_PREPARED_STATEMENTS=false`` turns them off (each statement parsed on every run), for a
    pooler in transaction mode that hands a session's prepared statements to another client.
    """
    limits = [
        f"-c {name}={max(1, int(seconds * 1000))}"
        for name, seconds in (
            ("statement_timeout", settings.db_statement_timeout),
            ("lock_timeout", settings.db_lock_timeout),
        )
        if seconds > 0
    ]
    args: dict[str, Any] = {"connect_timeout": max(1, round(settings.db_connect_timeout))}
    if not settings.db_prepared_statements and make_url(settings.database_url).get_driver_name() == "psycopg":
        args["prepare_threshold"] = None
    args["options"] = " ".join([*limits, f"-c plan_cache_mode={PLAN_CACHE_MODE}"])
    return args


def ping(engine: Engine) -> None:
    """One round trip to the database; raises when it is unreachable."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest Alembic revision this code ships."""
    heads = set(ScriptDirectory.from_config(alembic_config(str(engine.url))).get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current == heads


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


def write_lock(engine: Engine) -> AbstractContextManager[Any]:
    """Serialize this process's write transactions on SQLite; nothing on PostgreSQL.

    SQLite admits one writer; with several threads waiting on its busy timeout, a waiter sleeps and
    can be overtaken again and again (p99 ACK latency went from 11 ms to 0.5 s with 4 MLLP connections).
    A fair in-process lock queues them instead. Other processes still meet the busy timeout.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:
        lock = _WRITE_LOCKS.setdefault(engine, threading.Lock())
    return lock


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Translate the driver's errors into the gateway's tree, once, here (as httpx maps its transports').

    A unique-index violation means a concurrent writer won: :class:`StorageConflictError`, worth a retry.
    An operational error (connection lost, lock or statement timeout, serialization failure) is transient:
    :class:`StorageUnavailableError`. Any other driver error is a :class:`StorageError`.
    """
    try:
        yield
    except IntegrityError as exc:
        raise StorageConflictError(f"concurrent write ({type(exc.orig).__name__})") from exc
    except OperationalError as exc:
        raise StorageUnavailableError(f"database unavailable ({type(exc.orig).__name__})") from exc
    except DBAPIError as exc:
        raise StorageError(f"database error ({type(exc.orig).__name__})") from exc


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction behind this process's SQLite write lock, its driver errors translated; its
    commit is timed for ``/metrics``. On the connection this thread keeps (:class:`KeptConnection`) when
    it keeps one for ``engine``, otherwise on one checked out of the pool for the transaction."""
    kept: KeptConnection | None = getattr(_KEPT, "connection", None)
    if kept is not None and kept.engine is engine:
        with translated(), write_lock(engine):
            yield from kept.transaction()
        return
    with translated(), write_lock(engine), engine.connect() as conn:
        trans = conn.begin()
        try:
            yield conn
        except BaseException:
            trans.rollback()
            raise
        with timed(COMMIT_SECONDS):
            trans.commit()


#: the :class:`KeptConnection` of this thread's writer, while :meth:`KeptConnection.used` runs
_KEPT = threading.local()


class KeptConnection:
    """One connection a writer keeps across its transactions: no pool checkout, check-in and reset each.

    A writer thread commits a group after another, on the same engine; through the pool each cost a
    checkout and a check-in with their events and a ``Connection`` built anew. Kept, the connection is
    used by every :func:`transaction` of the thread inside :meth:`used`, and given back by :meth:`close`.
    It is given back, and a new one taken next time, whenever a transaction did not end cleanly (its
    ``BEGIN`` or commit failed, a rollback failed, the connection was invalidated by a disconnect): the
    pool's disconnect handling then applies as before. One left idle over :data:`PING_IDLE_SECONDS` is
    pinged first, as :func:`ping_when_idle` pings a pooled one (PostgreSQL), and replaced when the server
    dropped it. Not thread-safe: one per thread (:meth:`used` makes it the current thread's).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        #: ``time.monotonic()`` when the last transaction ended
        self._used = 0.0
        self._ping = engine.dialect.name != "sqlite"

    @contextlib.contextmanager
    def used(self) -> Iterator[None]:
        """This thread's write transactions on ``engine`` take this connection until the block ends."""
        previous = getattr(_KEPT, "connection", None)
        _KEPT.connection = self
        try:
            yield
        finally:
            _KEPT.connection = previous

    def transaction(self) -> Generator[Connection, None, None]:
        """The body of :func:`transaction` on the kept connection (inside its lock and translation)."""
        conn = self._connection()
        clean = False
        try:
            trans = conn.begin()
            try:
                yield conn
            except BaseException:
                trans.rollback()
                clean = not conn.invalidated
                raise
            with timed(COMMIT_SECONDS):
                trans.commit()
        except BaseException:
            if not clean:
                self.close()
            raise
        finally:
            self._used = time.monotonic()

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and (conn.invalidated or conn.closed):
            self.close()
            conn = None
        if conn is not None and self._ping and time.monotonic() - self._used > PING_IDLE_SECONDS:
            dbapi = conn.connection.dbapi_connection
            if dbapi is None or not self.engine.dialect._do_ping_w_event(dbapi):
                conn.invalidate()
                self.close()
                conn = None
        if conn is None:
            conn = self._conn = self.engine.connect()
        return conn

    def close(self) -> None:
        """Give the connection back to the pool (idempotent); the next transaction takes a new one."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except Exception:  # already failing (its rollback on return): the pool is left to discard it
            logger.warning("a kept connection failed to close; invalidating it")
            with contextlib.suppress(Exception):
                conn.invalidate()


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only connection, with the driver's errors translated as in :func:`transaction`."""
    with translated(), engine.connect() as conn:
        yield conn


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent, safe at every start)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise StartupError(f"database unreachable: {safe_url(str(engine.url))}: {first_line(exc)}") from exc
    except CommandError as exc:  # a revision this code does not know: a newer gateway migrated the store
        raise StartupError(
            f"the store's schema is newer than this gateway ({first_line(exc)}): run the gateway version that "
            "migrated it; every instance on one store must run the same version"
        ) from exc
    logger.info("schema migrated", extra={"database": engine.url.get_backend_name()})
