"""SQL statements per message kind, pinned: a change that adds (or saves) a statement on the hot path
shows here, on SQLite and PostgreSQL, instead of in a benchmark weeks later.

Transaction control (BEGIN, COMMIT, SAVEPOINT) is not counted. PostgreSQL adds one advisory lock per
stream a message touches (see ``FactRepo.lock``). When a change lowers a count on purpose, lower the
pinned figure with it (and say in ``bench/README.md`` what it bought).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event

from gateway.db.repo import SubscriptionRepo
from gateway.db.unit import LISTENING_MAX_AGE, ListeningRegistry, listening_registry
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")

#: (kind, message, statements on SQLite, advisory locks added on PostgreSQL). Re-pinned when ANS NdE event
#: declarations (flux 3, written with the stay: a patient read and each declaration's write) joined the
#: unit of work: A01 32 → 36, A02 24 → 25, A08 21 → 26, A03 38 → 47. Lowered when a message's streams and
#: the resources its refolds write were read in one query each (``preload``): 36 → 31, 25 → 20, 26 → 21,
#: 47 → 42; by one more each when the visit fact joined the patient facts' insert: 30, 19, 20, 41; and one
#: more when a patient in no merge is found so by one read (survivor and merged-in at once): 29, 18, 19, 40.
#: Raised for A01 alone when the care circle's members became ANS CDS 2.0.1 PractitionerRole / Organization
#: resources (#9), written with the message that names them: the hospital, the attending's role and the UF
#: are new on an admission (an insert, its index rows and its version each: 29 → 38); they are read with the
#: preload, so a later message that names them unchanged costs nothing more (A02, A08, A03 unchanged).
#: Lowered when a write rewrote only the index entries that changed (0006_compact_store: a delete of the
#: entries gone and an insert of the new ones, each only when there are any): A08 19 → 15, A03 40 → 35.
#: Then (#14, fold CPU) lowered when what a stay's refold writes (the stay, its movements and its NdE
#: declarations) is read in one query before the writes instead of one read each: A01 38 → 37, A02 18 → 16,
#: A08 19 → 17, A03 40 → 36; when a message's version rows were inserted together, in one statement, once its
#: refolds are done (``UnitOfWork.flush``): 37 → 29, 16 → 15, 17 → 16, 36 → 30; and by one each when what the
#: stay's refold writes is foreseen from its facts and read with the message's first preload: 28, 14, 15, 29.
#: Both merged (the index rewrite and the fold steps): A01 28, A02 14, A08 11, A03 24. Lowered by one for
#: A01 and A03 (the messages here that fire a topic, which read the subscriptions listening) when those were
#: kept in memory across transactions (``ListeningRegistry``): 27 and 23; read again only when stale, as the
#: last test here shows. Lowered for A01 (everything it writes is new) when ``resource_versions`` came to hold
#: only the versions replaced (0008_versions_replaced): a new resource inserts no version row, 27 → 26.
#: Lowered for A01 (#14, the fold's CPU) when the first refold of a stay left out the search for movements
#: ``partOf`` it (none can be: movements are written after their stay, and it was not stored): 26 → 25;
#: and when the circle of a patient first heard of found his stays in the identity map, not by a search
#: (he has none but those the message wrote): 25 → 24. Lowered (#14, sixth session) when a unit of work held
#: back its new resources' INSERTs and its index rows' DELETEs and INSERTs, netted by key, to one statement
#: each at its flush (before a search of a type it wrote, and at its end): A01 24 → 8 (every write of an
#: admission is new: one INSERT into resources, one into search_index), A02 14 → 13, A03 23 → 20; and when
#: it held back its optimistic UPDATEs likewise (one executemany, its rows' count checked): A08 11 → 10,
#: A03 20 → 17. Lowered for A03 (#14, seventh session) when a stay's search for its stored movements ran
#: before the stay's writes, and the circle's search of the patient's stays matched the unit's held-back
#: stays and movements itself instead of flushing them: one flush a message, not two (17 → 13). On
#: PostgreSQL (the last column), a message's advisory locks on its streams were one statement each (3),
#: then one for all (#14, seventh session).
STAY = Adt(control_id="S-1", ipp="300001", visit="V-3001", movement="M-1")
CASES: list[tuple[str, Adt, int, int]] = [
    ("A01 new patient and stay", STAY, 8, 1),
    ("A01 resent (duplicate)", STAY, 2, 0),
    (
        "A02 transfer",
        Adt(trigger="A02", control_id="S-2", ipp="300001", visit="V-3001", movement="M-2", event_time="20260301120000"),
        13,
        1,
    ),
    (
        "A08 demographics",
        Adt(
            trigger="A08",
            control_id="S-3",
            ipp="300001",
            visit="V-3001",
            movement="M-3",
            family="RENOMME",
            event_time="20260301130000",
        ),
        10,
        1,
    ),
    (
        "A03 discharge",
        Adt(
            trigger="A03",
            control_id="S-4",
            ipp="300001",
            visit="V-3001",
            movement="M-4",
            event_time="20260302100000",
            discharge_time="20260302100000",
        ),
        13,
        1,
    ),
]


@pytest.fixture
def counted(db: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if not statement.lstrip().upper().startswith(CONTROL):
            statements.append(statement)

    event.listen(db, "before_cursor_execute", capture)
    yield statements
    event.remove(db, "before_cursor_execute", capture)


@pytest.fixture
def registry(db: Engine) -> Iterator[ListeningRegistry]:
    """The engine's listening registry, read once and then trusted for the test (however slow the machine)."""
    found = listening_registry(db)
    found.max_age = math.inf
    with db.connect() as conn:
        found.listening(SubscriptionRepo(conn))
    yield found
    found.max_age = LISTENING_MAX_AGE


def test_statements_per_message_kind(
    db: Engine, mapping_engine: MappingEngine, registry: ListeningRegistry, counted: list[str]
) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    postgres = db.dialect.name == "postgresql"
    seen = []
    for kind, message, _, _ in CASES:
        counted.clear()
        outcome = pipeline.ingest(message.bytes(), transport="test")
        assert outcome.code == "AA", (kind, outcome.ack_text)
        seen.append((kind, len(counted)))
    expected = [(kind, n + (locks if postgres else 0)) for kind, _, n, locks in CASES]
    assert seen == expected


def test_a_stale_registry_costs_one_read(
    db: Engine, mapping_engine: MappingEngine, registry: ListeningRegistry, counted: list[str]
) -> None:
    """The subscriptions are read again once the registry's read has expired, or this process wrote one."""
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    kind, message, n, locks = CASES[0]
    registry.forget()
    assert pipeline.ingest(message.bytes(), transport="test").code == "AA"
    postgres = db.dialect.name == "postgresql"
    assert len(counted) == n + 1 + (locks if postgres else 0), kind
    assert sum("FROM subscriptions" in s for s in counted) == 1
