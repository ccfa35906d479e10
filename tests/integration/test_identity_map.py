"""The unit of work's identity map and searches: a search hands back the unit's own copy of a version it
holds (no second inflate and parse), and reads the row when the stored version is another."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from gateway.db.indexing import search_entries
from gateway.db.repo import ResourceRepo
from gateway.db.unit import unit_of_work

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ORG = {"resourceType": "Organization", "id": "org-s", "name": "CH", "identifier": [{"system": "urn:x", "value": "1"}]}
BY_IDENTIFIER = [("identifier", "urn:x", "1")]


def test_a_search_returns_the_version_the_unit_holds_and_reads_another(db: Engine) -> None:
    assert search_entries(ORG)  # the search below goes through the index
    with unit_of_work(db) as uow:
        stored, _ = uow.resources.write(ORG, now=NOW, index=search_entries(ORG))
        found, _ = uow.resources.search("Organization", BY_IDENTIFIER, limit=10, count=False)
        assert found == [stored] and found[0] is stored
        # another repository on the same connection moves the row on: the map's copy is now stale
        ResourceRepo(uow.conn).write({**ORG, "name": "CH 2"}, now=NOW, index=search_entries(ORG))
        found, _ = uow.resources.search("Organization", BY_IDENTIFIER, limit=10, count=False)
        assert [(r.version_id, r.content["name"]) for r in found] == [(2, "CH 2")]
        assert found[0] is not stored
