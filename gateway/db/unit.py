"""The unit of work: one write transaction's repositories, as ``state/`` and the pipeline see them.

``state/`` folds facts into resources without knowing SQL; it reaches the store only through this object,
whose repositories share one connection and keep, for the length of the transaction, what they already
read (resources by id, a stream's facts, the subscriptions listening per topic). Nothing is cached across
transactions: another gateway instance may write between two of them. Resource versions are inserted
together by :meth:`UnitOfWork.flush`: ``state/`` flushes when a message's refolds are done, and the
context managers below flush again before their transaction or SAVEPOINT ends, so none is left behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Connection

from gateway.db.engine import Database, transaction, translated
from gateway.db.repo import (
    FactRepo,
    MessageRepo,
    OutboxRepo,
    PatientLinkRepo,
    ResourceRepo,
    SubscriptionRecord,
    SubscriptionRepo,
)


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
        self._listening: dict[str, list[SubscriptionRecord]] | None = None

    def listening(self, topic_url: str, *, now: datetime | None = None) -> list[SubscriptionRecord]:
        """Subscriptions recording events of ``topic_url`` (and, given ``now``, valid then: start, ``end``):
        those of every topic read in one query, once per transaction (a message fires several topics; most
        fire none that anyone listens to)."""
        if self._listening is None:
            self._listening = self.subscriptions.listening_by_topic(now=now)
        return self._listening.get(topic_url, [])

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
