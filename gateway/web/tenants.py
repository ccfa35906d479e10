"""Sandbox tenants: senders whose HTTP and MLLP messages go to an isolated sandbox store, never to real data.

The sandbox store is a database of its own (``GATEWAY_SANDBOX_DATABASE_URL``) with its own pipeline and
no delivery worker, so nothing a sandbox sender sends is seen by a platform or mixed with patients'
real records. Which senders are sandbox senders: the clients registered with
``gateway clients add --kind sender --sandbox`` (their facilities, refreshed with the registry, and, over
HTTP, the authenticated client itself), and the list ``GATEWAY_SANDBOX_SENDERS`` (``MSH-3|MSH-4``) for
senders without a registration.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Settings
from gateway.db.engine import Database as DB
from gateway.db.engine import make_engine, migrate
from gateway.errors import GatewayError
from gateway.hl7 import er7
from gateway.mapping.engine import Engine, read_header
from gateway.pipeline import Pipeline


def parse_senders(entries: list[str]) -> frozenset[tuple[str, str]]:
    """``["GAM-X|CH-X", "GAM-Y"]`` → {(app, facility)}; a missing facility matches every facility (``*``)."""
    senders = set()
    for entry in entries:
        app, _, facility = entry.partition("|")
        senders.add((app.strip(), facility.strip() or "*"))
    return frozenset(senders)


@dataclass
class SandboxStore:
    db: DB
    pipeline: Pipeline
    senders: frozenset[tuple[str, str]]
    #: MSH-4 values of the registry's sandbox senders (a facility is never both real and sandbox)
    tenant_facilities: frozenset[str] = frozenset()

    @classmethod
    def build(cls, settings: Settings, *, engine: Engine, run_migrations: bool = True) -> SandboxStore | None:
        """The sandbox store when ``sandbox_database_url`` is set, else ``None`` (no sandbox tenants)."""
        if not settings.sandbox_database_url:
            return None
        db = make_engine(settings.model_copy(update={"database_url": settings.sandbox_database_url}))
        if run_migrations:
            migrate(db)
        return cls(db=db, pipeline=Pipeline(engine=engine, db=db), senders=parse_senders(settings.sandbox_senders))

    def is_sandbox_sender(self, sender: tuple[str, str]) -> bool:
        app, facility = sender
        return facility in self.tenant_facilities or (app, facility) in self.senders or (app, "*") in self.senders

    def takes(self, raw: bytes) -> bool:
        """Whether ``raw`` comes from a sandbox sender (an unreadable message goes the normal way: AR there)."""
        if not self.senders and not self.tenant_facilities:
            return False
        try:
            header = read_header(er7.parse(raw))
        except GatewayError:
            return False
        return self.is_sandbox_sender(header.sender)

    def close(self) -> None:
        self.db.dispose()
