"""Engine creation and schema migration; the SQLite pragmas that make the embedded store durable."""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from gateway.config import Settings
from gateway.errors import StorageConflictError, StorageError, StorageUnavailableError

logger = logging.getLogger(__name__)

#: The engine type as the layers above ``db/`` name it, so that they need not import SQLAlchemy.
Database = Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(settings: Settings) -> Engine:
    """One engine per process. SQLite gets WAL, a busy timeout and the configured ``synchronous``."""
    url = settings.database_url
    if is_sqlite(url):
        database = make_url(url).database
        in_memory = not database or database == ":memory:"
        if not in_memory:
            Path(database or "").parent.mkdir(parents=True, exist_ok=True)
        # An in-memory store lives in one connection: every session must share it (dry runs, sandbox).
        pool = {"poolclass": StaticPool} if in_memory else {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
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
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # psycopg prepares a statement on the server after 5 runs, and PostgreSQL may then keep a generic plan
    # chosen while the tables were empty (no ANALYZE yet on a fresh database): the stays lookup went from
    # ~1 ms to seconds after a few hundred messages. Planned on each run, it follows the tables' real size.
    connect_args = {"prepare_threshold": None} if make_url(url).get_driver_name() == "psycopg" else {}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=connect_args)


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
    """A write transaction: ``engine.begin()`` behind this process's SQLite write lock; errors translated."""
    with translated(), write_lock(engine), engine.begin() as conn:
        yield conn


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
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    logger.info("schema migrated", extra={"database": engine.url.get_backend_name()})
