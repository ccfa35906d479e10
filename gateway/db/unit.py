"""The unit of work: one write transaction's repositories, as ``state/`` and the pipeline see them.

``state/`` folds facts into resources without knowing SQL; it reaches the store only through this object,
whose repositories share one connection and keep, for the length of the transaction, what they already
read (resources by id, a stream's facts, the subscriptions listening per topic). Nothing is cached across
transactions: another gateway instance may write between two of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Connection

from gateway.db.engine import Database, transaction
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
        self.facts = FactRepo(conn)
        self.resources = ResourceRepo(conn)
        self.links = PatientLinkRepo(conn)
        self.subscriptions = SubscriptionRepo(conn)
        self.outbox = OutboxRepo(conn)
        self._listening: dict[str, list[SubscriptionRecord]] = {}

    def listening(self, topic_url: str) -> list[SubscriptionRecord]:
        """Subscriptions recording events of ``topic_url``, read once per transaction."""
        if topic_url not in self._listening:
            self._listening[topic_url] = self.subscriptions.listening(topic_url)
        return self._listening[topic_url]


@contextlib.contextmanager
def unit_of_work(db: Database) -> Iterator[UnitOfWork]:
    """A write transaction (see :func:`gateway.db.engine.transaction`) and its unit of work."""
    with transaction(db) as conn:
        yield UnitOfWork(conn)
