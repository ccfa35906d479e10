"""Waking delivery workers of other processes: PostgreSQL ``LISTEN``/``NOTIFY``; SQLite's ``data_version``.

Ingest runs in one process (``gateway serve`` with ``GATEWAY_RUN_WORKER=false``), delivery in others
(``gateway worker``). After a commit that queued notifications the ingest side sends one ``NOTIFY`` on
:data:`CHANNEL`; every listening worker wakes and claims (``FOR UPDATE SKIP LOCKED``, so waking them all
costs the losers one empty claim, not a duplicate). A notification carries nothing: the outbox is the
truth, a lost one costs at most a poll interval. SQLite cannot signal another process: a worker there
reads ``PRAGMA data_version`` every :data:`SQLITE_WATCH_SECONDS` (it changes when another connection
commits; a few microseconds, no lock, no thread) and looks at the outbox only when it did.

Both ends use a psycopg connection of their own in autocommit, not the engine's pool: a ``NOTIFY`` must
not wait for, or be counted in, a transaction of the ingest, and a ``LISTEN`` holds its connection for
as long as the worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Engine

logger = logging.getLogger(__name__)

#: The channel announcements go on (one per store: a channel is per database in PostgreSQL).
CHANNEL = "gateway_outbox"
#: Seconds between attempts to open the listening connection again after it failed.
RELISTEN_SECONDS = 1.0
#: libpq's connect timeout for these connections, seconds.
CONNECT_TIMEOUT = 5
#: Seconds between two reads of SQLite's ``data_version``: what it adds to a notification's latency at
#: most (half on average). Idle, 20 reads a second cost ~0.4 % of a CPU (bench/README.md).
SQLITE_WATCH_SECONDS = 0.05


def announces(db: Engine) -> bool:
    """Whether this store can wake workers of other processes (PostgreSQL through psycopg)."""
    return db.dialect.name == "postgresql" and db.dialect.driver == "psycopg"


def watches(db: Engine) -> bool:
    """Whether this store is a SQLite file another process may commit to (not an in-memory store)."""
    database = db.url.database or ""
    return db.dialect.name == "sqlite" and database not in ("", ":memory:") and "mode=memory" not in str(db.url)


def _conninfo(db: Engine) -> str:
    """The engine's URL as libpq takes it (``postgresql://…``, password included: never logged)."""
    return db.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _close(holder: list[Any]) -> None:
    if holder and holder[0] is not None:
        with contextlib.suppress(Exception):  # a finalizer: the connection is being dropped anyway
            holder[0].close()
        holder[0] = None


class Announcer:
    """``NOTIFY`` :data:`CHANNEL` after a commit that queued notifications; calls are coalesced.

    :meth:`announce` is called from ingest threads (and the API's) after their commit, on a thread that
    may wait for the round trip (the worker's own pool). Calls that come while a ``NOTIFY`` is being sent
    make one more afterwards, not one each: under a busy feed one ``NOTIFY`` stands for every commit made
    meanwhile. It never raises: a failure is logged and the connection opened again on the next call.
    """

    def __init__(self, db: Engine) -> None:
        self._conninfo = _conninfo(db)
        self._lock = threading.Lock()
        self._sending = False
        self._again = False
        #: the connection, in a list that the finalizer shares (it must not hold ``self``)
        self._conn: list[Any] = [None]
        self.sent = 0
        weakref.finalize(self, _close, self._conn)

    def announce(self) -> None:
        with self._lock:
            if self._sending:
                self._again = True
                return
            self._sending = True
        try:
            while True:
                self._notify()
                with self._lock:
                    if not self._again:
                        self._sending = False
                        return
                    self._again = False
        except BaseException:
            with self._lock:
                self._sending = self._again = False
            raise

    def _notify(self) -> None:
        try:
            if self._conn[0] is None or self._conn[0].closed:
                self._conn[0] = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            self._conn[0].execute(f"NOTIFY {CHANNEL}")
            self.sent += 1
        except (psycopg.Error, OSError) as exc:
            logger.warning("could not announce queued notifications (%s): workers find them at their next poll", exc)
            _close(self._conn)

    def close(self) -> None:
        _close(self._conn)


async def listen(db: Engine, wake: Callable[[], None], *, ready: asyncio.Event | None = None) -> None:
    """Call ``wake`` on every ``NOTIFY`` on :data:`CHANNEL`, until cancelled.

    ``wake`` is also called on every (re)connection: what was announced while no connection listened is
    found by the claim it triggers. A lost connection is opened again every :data:`RELISTEN_SECONDS`;
    meanwhile the worker's poll goes on. ``ready`` is set once the first ``LISTEN`` is in place (tests).
    """
    conninfo = _conninfo(db)
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                logger.info("listening for queued notifications on %s", CHANNEL)
                if ready is not None:
                    ready.set()
                wake()
                async for _notify in conn.notifies():
                    wake()
        except (psycopg.Error, OSError) as exc:
            logger.warning("listening for queued notifications failed (%s); again in %.0f s", exc, RELISTEN_SECONDS)
        await asyncio.sleep(RELISTEN_SECONDS)


async def watch(db: Engine, wake: Callable[[], None], *, every: float = SQLITE_WATCH_SECONDS) -> None:
    """Call ``wake`` whenever another connection (another process's, or this one's pool) committed to the
    SQLite file, until cancelled; read every ``every`` seconds on a connection of its own that never writes.

    ``data_version`` is read from the WAL index: no lock is taken, a writer never waits for it. If the
    file cannot be opened, the worker is left to its poll (logged once).
    """
    try:
        conn = sqlite3.connect(db.url.database or "", check_same_thread=False)
    except sqlite3.Error as exc:
        logger.warning("cannot watch the SQLite store for commits (%s): the worker only polls", exc)
        return
    try:
        seen = conn.execute("PRAGMA data_version").fetchone()[0]
        while True:
            await asyncio.sleep(every)
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                seen = version
                wake()
    except sqlite3.Error as exc:
        logger.warning("watching the SQLite store for commits failed (%s): the worker only polls", exc)
    finally:
        conn.close()
