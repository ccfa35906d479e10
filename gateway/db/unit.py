"""The unit of work: one write transaction's repositories, as ``state/`` and the pipeline see them.

``state/`` folds facts into resources without knowing SQL; it reaches the store only through this object,
whose repositories share one connection and keep, for the length of the transaction, what they already
read (resources by id, a stream's facts). Nothing of the store's data is cached across transactions: another
gateway instance may write between two of them. The one exception is the subscriptions listening per topic
(:class:`ListeningRegistry`, as hapi-fhir keeps its subscription registry): a handful of rows read on every
message, changed rarely, and kept per engine; this process's own changes are seen at once, another
instance's within :data:`LISTENING_MAX_AGE` seconds. Resource versions are inserted
together by :meth:`UnitOfWork.flush`: ``state/`` flushes when a message's refolds are done, and the
context managers below flush again before their transaction or SAVEPOINT ends, so none is left behind.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from sqlalchemy import Connection, Engine

from gateway.clock import as_utc
from gateway.db.engine import Database, transaction, translated
from gateway.db.repo import (
    FactRepo,
    MessageRepo,
    OutboxRepo,
    PatientLinkRepo,
    ResourceRepo,
    SubscriptionRecord,
    SubscriptionRepo,
    subscription_generation,
)

#: Seconds the listening registry trusts its last read of the subscriptions: how soon a subscription that
#: another gateway instance creates, changes or deletes is matched here (this process's own: at once).
LISTENING_MAX_AGE = 1.0

#: topic URL -> the subscriptions recording it (``requested``, ``active``, ``error``), ordered by id
Listening = Mapping[str, tuple[SubscriptionRecord, ...]]


class ListeningRegistry:
    """The subscriptions listening per topic, kept in memory across transactions (one per engine).

    Read again when this process has written a subscription since (:func:`subscription_generation`, bumped
    at the write and at its commit), and otherwise at most once every ``max_age`` seconds, which is how
    another instance's changes reach it. Validity at a message's time (start, ``end``) is not part of what
    it keeps: :meth:`UnitOfWork.listening` applies it per message.
    """

    def __init__(self, *, max_age: float = LISTENING_MAX_AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.clock = clock
        #: (generation, monotonic time read, topics) of the last read; replaced whole, never changed
        self._read: tuple[int, float, Listening] | None = None

    def listening(self, repo: SubscriptionRepo) -> Listening:
        """The subscriptions per topic, read through ``repo`` (the caller's transaction) when stale."""
        generation, now, read = subscription_generation(), self.clock(), self._read
        if read is not None and read[0] == generation and now - read[1] < self.max_age:
            return read[2]
        # The generation is taken before the read: a write meanwhile makes the next message read again.
        topics = {topic: tuple(subs) for topic, subs in repo.listening_by_topic().items()}
        self._read = (generation, now, topics)
        return topics

    def forget(self) -> None:
        """Read again on the next message."""
        self._read = None


_REGISTRIES: weakref.WeakKeyDictionary[Engine, ListeningRegistry] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()


def listening_registry(engine: Engine) -> ListeningRegistry:
    """The registry of ``engine``'s store (each engine is one database: an in-memory store is its own)."""
    registry = _REGISTRIES.get(engine)
    if registry is None:
        with _REGISTRIES_LOCK:
            registry = _REGISTRIES.setdefault(engine, ListeningRegistry())
    return registry


def _valid_at(sub: SubscriptionRecord, now: datetime) -> bool:
    """(Subscription ``end`` and NdE Start) as ``SubscriptionRepo.listening(now=…)`` tests them in SQL."""
    return (sub.end_at is None or sub.end_at > now) and (sub.start_at is None or sub.start_at <= now)


class UnitOfWork:
    """Repositories over one connection, inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.messages = MessageRepo(conn)
        self.facts = FactRepo(conn, cached=True)
        self.resources = ResourceRepo(conn, cached=True)
        self.links = PatientLinkRepo(conn, cached=True)
        self.subscriptions = SubscriptionRepo(conn)
        self.outbox = OutboxRepo(conn)
        self.registry = listening_registry(conn.engine)
        self._listening: Listening | None = None

    def listening(self, topic_url: str, *, now: datetime | None = None) -> list[SubscriptionRecord]:
        """Subscriptions recording events of ``topic_url`` (and, given ``now``, valid then: start, ``end``):
        from the registry, taken once per transaction (a message fires several topics; most fire none that
        anyone listens to)."""
        if self._listening is None:
            self._listening = self.registry.listening(self.subscriptions)
        subs = self._listening.get(topic_url, ())
        at = as_utc(now)
        return [s for s in subs if at is None or _valid_at(s, at)]

    def flush(self) -> None:
        """Write what the repositories hold back (the resources' version rows), in one statement each."""
        self.resources.flush()


@contextlib.contextmanager
def unit_of_work(db: Database) -> Iterator[UnitOfWork]:
    """A write transaction (see :func:`gateway.db.engine.transaction`) and its unit of work."""
    with transaction(db) as conn:
        uow = UnitOfWork(conn)
        yield uow
        uow.flush()


class Batch:
    """One write transaction holding several messages, each in a SAVEPOINT of its own (group commit)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @contextlib.contextmanager
    def message(self, *, savepoint: bool = True) -> Iterator[UnitOfWork]:
        """A unit of work for one message; when it raises, only its own writes are rolled back.

        ``savepoint=False`` leaves out the SAVEPOINT (two statements, two round trips on PostgreSQL): a
        message that raises then leaves its writes in the transaction, which the caller must roll back
        whole."""
        with translated(), self.conn.begin_nested() if savepoint else contextlib.nullcontext():
            uow = UnitOfWork(self.conn)
            yield uow
            uow.flush()


@contextlib.contextmanager
def batch(db: Database) -> Iterator[Batch]:
    """A write transaction for a group of messages, committed once."""
    with transaction(db) as conn:
        yield Batch(conn)
