"""Writes held back by the unit of work (``ResourceRepo.flush``): new resources' INSERTs and the index rows'
DELETEs and INSERTs wait for the flush, one statement each, netted by key; a search of a type the unit wrote
flushes first; what the store holds at the end is what writing at once leaves, in any order of writes; and a
concurrent writer of the same new resource is still refused."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, select

from gateway.db import schema
from gateway.db.indexing import search_entries, stored_rows
from gateway.db.repo import JSON, ResourceRepo
from gateway.db.unit import unit_of_work
from gateway.errors import StorageConflictError

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def org(rid: str, *values: str, name: str = "CH") -> JSON:
    return {
        "resourceType": "Organization",
        "id": rid,
        "name": name,
        "identifier": [{"system": "urn:x", "value": v} for v in values],
    }


@pytest.fixture
def counted(db: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if not statement.lstrip().upper().startswith(CONTROL):
            statements.append(" ".join(statement.split()[:3]))

    event.listen(db, "before_cursor_execute", capture)
    yield statements
    event.remove(db, "before_cursor_execute", capture)


def index_rows(db: Engine, rid: str) -> set[tuple[int, str, str]]:
    with db.connect() as conn:
        return rows_of(conn, rid)


def rows_of(conn: Connection, rid: str) -> set[tuple[int, str, str]]:
    table = schema.search_index
    rows = conn.execute(select(table.c.code, table.c.value, table.c.system).where(table.c.id == rid))
    return {(int(code), str(value), str(system)) for code, value, system in rows}


def expected_rows(content: JSON) -> set[tuple[int, str, str]]:
    return set(stored_rows(str(content["resourceType"]), str(content["id"]), search_entries(content)))


def write(repo: ResourceRepo, content: JSON) -> None:
    repo.write(content, now=NOW, index=lambda: search_entries(content))


def test_new_resources_and_index_rows_are_one_statement_each_at_the_flush(db: Engine, counted: list[str]) -> None:
    with unit_of_work(db) as uow:
        for i in range(3):
            uow.resources.preload([("Organization", f"org-{i}")])
        counted.clear()
        for i in range(3):
            write(uow.resources, org(f"org-{i}", f"{i}", f"{i}0"))
        assert counted == []  # held back: the identity map answers reads of them
        assert uow.resources.get("Organization", "org-1") is not None
        uow.flush()
        assert counted == ["INSERT INTO resources", "INSERT INTO search_index"]
    for i in range(3):
        assert index_rows(db, f"org-{i}") == expected_rows(org(f"org-{i}", f"{i}", f"{i}0")) != set()


def test_a_search_of_a_type_written_flushes_first_and_of_another_does_not(db: Engine, counted: list[str]) -> None:
    with unit_of_work(db) as uow:
        uow.resources.preload([("Organization", "org-s")])
        write(uow.resources, org("org-s", "7"))
        counted.clear()
        found, _ = uow.resources.search("Patient", [("identifier", "urn:x", "7")], limit=10, count=False)
        assert found == [] and counted == ["SELECT resources.type, resources.id,"]
        counted.clear()
        found, _ = uow.resources.search("Organization", [("identifier", "urn:x", "7")], limit=10, count=False)
        assert [r.id for r in found] == ["org-s"]
        assert counted[:2] == ["INSERT INTO resources", "INSERT INTO search_index"]
        counted.clear()
        uow.flush()
        assert counted == []  # nothing left


class Undone(Exception):
    """Raised to roll a unit of work back."""


def stay(rid: str, patient: str, *, status: str = "in-progress") -> JSON:
    return {"resourceType": "Encounter", "id": rid, "status": status, "subject": {"reference": f"Patient/{patient}"}}


def test_a_search_matching_the_held_back_rows_finds_what_a_flush_and_a_search_find(
    db: Engine, counted: list[str]
) -> None:
    """``held_back``: the store answers for what the unit has not written, the predicate for what it has
    (new, changed, moved to or away from the patient), with no flush between; the page is the one a flush
    then a search gives, in its order."""
    with unit_of_work(db) as uow:
        for rid, patient in (("e-kept", "p1"), ("e-changed", "p1"), ("e-moved-away", "p1"), ("e-moved-in", "p2")):
            write(uow.resources, stay(rid, patient))
    later = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
    pages = []
    for flushed in (False, True):
        with pytest.raises(Undone), unit_of_work(db) as uow:
            for content in (
                stay("e-changed", "p1", status="finished"),
                stay("e-moved-away", "p2"),
                stay("e-moved-in", "p1"),
                stay("e-new", "p1"),
                stay("e-other", "p3"),
            ):
                uow.resources.write(content, now=later, index=lambda c=content: search_entries(c))
            counted.clear()
            criteria = [("patient", None, "Patient/p1")]
            if flushed:
                uow.flush()
                found, _ = uow.resources.search("Encounter", criteria, limit=10, count=False)
            else:
                found, _ = uow.resources.search(
                    "Encounter",
                    criteria,
                    limit=10,
                    count=False,
                    held_back=lambda r: r.content["subject"]["reference"] == "Patient/p1",
                )
                assert counted == ["SELECT resources.type, resources.id,"]  # nothing flushed for it
            pages.append([(r.id, r.version_id, r.content["status"]) for r in found])
            raise Undone  # the second pass starts from the same store
    assert pages[0] == pages[1]
    assert [rid for rid, _, _ in pages[0]] == ["e-changed", "e-moved-in", "e-new", "e-kept"]


def test_a_row_deleted_then_written_again_in_one_unit_is_stored_once(db: Engine) -> None:
    with unit_of_work(db) as uow:
        write(uow.resources, org("org-n", "1", "2"))
    with unit_of_work(db) as uow:
        write(uow.resources, org("org-n", "2", "3"))  # "1" gone, "3" added
        write(uow.resources, org("org-n", "1", "2"))  # "1" back, "3" gone again
        write(uow.resources, org("org-n", "1", "4"))  # "2" gone, "4" added
    assert index_rows(db, "org-n") == expected_rows(org("org-n", "1", "4"))
    with db.connect() as conn:
        assert [v.version_id for v in ResourceRepo(conn).history("Organization", "org-n")] == [4, 3, 2, 1]


def test_a_new_resource_written_again_and_deleted_in_its_unit(db: Engine) -> None:
    with unit_of_work(db) as uow:
        write(uow.resources, org("org-d", "1"))
        write(uow.resources, org("org-d", "2"))
        assert uow.resources.delete("Organization", "org-d", now=NOW)
        stored = uow.resources.get("Organization", "org-d")
        assert stored is not None and stored.deleted and stored.version_id == 3
    assert index_rows(db, "org-d") == set()
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        history = repo.history("Organization", "org-d")
        assert [(v.version_id, v.deleted) for v in history] == [(3, True), (2, False), (1, False)]
        assert history[1].content["identifier"] == [{"system": "urn:x", "value": "2"}]


@pytest.mark.parametrize("seed", range(6))
def test_any_order_of_writes_leaves_what_writing_at_once_leaves(db: Engine, seed: int) -> None:
    """Random writes, deletes and searches over a few resources, in one unit of work (held back) and through
    a repository outside one (at once) on ids of their own: the same versions and the index rows of each
    resource's last content."""
    rng = random.Random(seed)
    steps = []
    for _ in range(40):
        n, kind = rng.randrange(3), rng.choices(["write", "delete", "search"], [8, 1, 2])[0]
        values = rng.sample(["1", "2", "3", "4"], rng.randrange(0, 3))
        steps.append((n, kind, values, rng.choice(["A", "B"])))

    def play(repo: ResourceRepo, prefix: str) -> dict[str, JSON | None]:
        last: dict[str, JSON | None] = {}
        for n, kind, values, name in steps:
            rid = f"{prefix}-{n}"
            if kind == "write":
                content = org(rid, *values, name=name)
                repo.write(content, now=NOW, index=lambda c=content: search_entries(c))  # type: ignore[misc]
                last[rid] = content
            elif kind == "delete":
                if repo.delete("Organization", rid, now=NOW):
                    last[rid] = None
            else:
                found, _ = repo.search("Organization", [("identifier", "urn:x", values[0] if values else "1")],
                                       limit=10, count=False)  # fmt: skip
                searched = {r.id for r in found if r.id.startswith(prefix)}
                wanted = {r for r, c in last.items() if c and any(i["value"] == (values or ["1"])[0]
                                                                  for i in c["identifier"])}  # fmt: skip
                assert searched == wanted
        return last

    with unit_of_work(db) as uow:
        held = play(uow.resources, "held")
    with db.connect() as conn, conn.begin():
        direct = play(ResourceRepo(conn), "direct")
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        for n in range(3):
            a, b = f"held-{n}", f"direct-{n}"
            versions = [[(v.version_id, v.deleted) for v in repo.history("Organization", rid)] for rid in (a, b)]
            assert versions[0] == versions[1]
            for rid, last in ((a, held.get(a)), (b, direct.get(b))):
                assert rows_of(conn, rid) == (expected_rows(last) if last else set())


def test_a_concurrent_insert_of_the_same_new_resource_is_a_conflict(db: Engine) -> None:
    """Two gateways admit the same new resource: the one whose held-back INSERT comes second is refused at
    its flush (and its message applied again from a fresh read), never overwriting the first."""
    if db.dialect.name != "postgresql":
        pytest.skip("SQLite: one writer at a time, nothing to race")
    with pytest.raises(StorageConflictError), unit_of_work(db) as late:
        assert late.resources.get("Organization", "org-c") is None
        with unit_of_work(db) as first:
            write(first.resources, org("org-c", "1", name="first"))
        write(late.resources, org("org-c", "2", name="late"))  # held back: the conflict comes at the flush
    with db.connect() as conn:
        stored = ResourceRepo(conn).get("Organization", "org-c")
    assert stored is not None and (stored.version_id, stored.content["name"]) == (1, "first")
    assert index_rows(db, "org-c") == expected_rows(org("org-c", "1", name="first"))


def test_a_locked_read_of_a_held_back_resource_finds_it(db: Engine) -> None:
    with unit_of_work(db) as uow:
        write(uow.resources, org("org-l", "1"))
        found = uow.resources.get("Organization", "org-l", for_update=True)
        assert found is not None and found.version_id == 1
        assert uow.resources.exists("Organization", "org-l")


def test_a_concurrent_update_of_a_resource_read_is_a_conflict_at_the_flush(db: Engine) -> None:
    """The held-back UPDATEs run together at the flush, each over the version its unit read: one that
    another gateway replaced meanwhile matches no row, and the unit is refused, whatever the others did."""
    if db.dialect.name != "postgresql":
        pytest.skip("SQLite: one writer at a time, nothing to race")
    with unit_of_work(db) as uow:
        for rid in ("org-u1", "org-u2"):
            write(uow.resources, org(rid, "1"))
    with pytest.raises(StorageConflictError), unit_of_work(db) as late:
        late.resources.preload([("Organization", "org-u1"), ("Organization", "org-u2")])
        with unit_of_work(db) as first:
            write(first.resources, org("org-u2", "2", name="first"))
        write(late.resources, org("org-u1", "3", name="late"))
        write(late.resources, org("org-u2", "3", name="late"))
        write(late.resources, org("org-u2", "4", name="late again"))
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        assert [(v.version_id, v.content["name"]) for v in repo.history("Organization", "org-u1")] == [(1, "CH")]
        newest = repo.history("Organization", "org-u2")[0]
        assert (newest.version_id, newest.content["name"]) == (2, "first")
        assert rows_of(conn, "org-u2") == expected_rows(org("org-u2", "2"))


def test_updates_are_one_statement_at_the_flush(db: Engine, counted: list[str]) -> None:
    with unit_of_work(db) as uow:
        for rid in ("org-v1", "org-v2"):
            write(uow.resources, org(rid, "1"))
    with unit_of_work(db) as uow:
        uow.resources.preload([("Organization", "org-v1"), ("Organization", "org-v2")])
        counted.clear()
        write(uow.resources, org("org-v1", "1", name="B"))
        write(uow.resources, org("org-v2", "1", name="B"))
        write(uow.resources, org("org-v2", "1", name="C"))
        assert counted == []
        uow.flush()
        assert counted == ["UPDATE resources SET", "INSERT INTO resource_versions"]
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        assert [v.version_id for v in repo.history("Organization", "org-v2")] == [3, 2, 1]
        assert [v.content["name"] for v in repo.history("Organization", "org-v1")] == ["B", "CH"]
