"""Version rows held back by the unit of work (``ResourceRepo.flush``): every version a message replaces is
stored with it (the current one lives in ``resources`` alone), a rolled-back message leaves none, and a read
of versions in the same transaction sees them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from gateway.db import schema
from gateway.db.indexing import search_entries
from gateway.db.repo import ResourceRepo
from gateway.db.unit import batch, unit_of_work
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from tests.messages import Adt

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def versions(db: Engine) -> dict[tuple[str, str], list[int]]:
    with db.connect() as conn:
        table = schema.resource_versions
        rows = conn.execute(select(table.c.type, table.c.id, table.c.version_id))
        out: dict[tuple[str, str], list[int]] = {}
        for rtype, rid, version in rows:
            out.setdefault((str(rtype), str(rid)), []).append(int(version))
        return {key: sorted(found) for key, found in out.items()}


def test_every_version_a_message_replaces_is_stored(db: Engine, mapping_engine: MappingEngine) -> None:
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    admit = Adt(control_id="V-1", ipp="500001", visit="V-5001", movement="M-1")
    discharge = Adt(trigger="A03", control_id="V-2", ipp="500001", visit="V-5001", movement="M-2",
                    event_time="20260302100000", discharge_time="20260302100000")  # fmt: skip
    for message in (admit, discharge):
        assert pipeline.ingest(message.bytes(), transport="test").code == "AA"
    with db.connect() as conn:
        current = {(str(r.type), str(r.id)): int(r.version_id) for r in conn.execute(select(schema.resources))}
    assert len(current) > 5 and any(version > 1 for version in current.values())
    assert versions(db) == {key: list(range(1, version)) for key, version in current.items() if version > 1}
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        for (rtype, rid), version in current.items():
            assert [v.version_id for v in repo.history(rtype, rid)] == list(range(version, 0, -1))


def test_a_read_of_versions_in_the_transaction_sees_those_held_back(db: Engine) -> None:
    org = {"resourceType": "Organization", "id": "org-1", "name": "CH A"}
    with unit_of_work(db) as uow:
        uow.resources.write(org, now=NOW, index=lambda: search_entries(org))
        uow.resources.write({**org, "name": "CH B"}, now=NOW, index=search_entries(org))
        assert [v.version_id for v in uow.resources.history("Organization", "org-1")] == [2, 1]
        found = uow.resources.vread("Organization", "org-1", 1)
        assert found is not None and found.content["name"] == "CH A"
    assert versions(db) == {("Organization", "org-1"): [1]}
    with db.connect() as conn:
        stored = ResourceRepo(conn).get("Organization", "org-1")
    assert stored is not None and (stored.version_id, stored.content["name"]) == (2, "CH B")


def test_a_message_rolled_back_in_a_group_leaves_no_version(db: Engine) -> None:
    kept = {"resourceType": "Organization", "id": "org-kept", "name": "kept"}
    lost = {"resourceType": "Organization", "id": "org-lost", "name": "lost"}
    with unit_of_work(db) as uow:
        for org in (kept, lost):
            uow.resources.write(org, now=NOW, index=[])
    with batch(db) as group:
        with group.message() as uow:
            uow.resources.write({**kept, "name": "kept 2"}, now=NOW, index=[])
        with pytest.raises(RuntimeError), group.message() as uow:
            uow.resources.write({**lost, "name": "lost 2"}, now=NOW, index=[])
            raise RuntimeError("this message fails after its write")
    assert versions(db) == {("Organization", "org-kept"): [1]}
    with db.connect() as conn:
        repo = ResourceRepo(conn)
        assert [(v.version_id, v.content["name"]) for v in repo.history("Organization", "org-lost")] == [(1, "lost")]
        assert [v.version_id for v in repo.history("Organization", "org-kept")] == [2, 1]
