"""The unit of work's identity map and searches: a search hands back the unit's own copy of a version it
holds (no second inflate and parse), and reads the row when the stored version is another; what a unit finds
in its map instead of searching is what the search would find."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from gateway.db.indexing import search_entries
from gateway.db.repo import ResourceRepo
from gateway.db.unit import unit_of_work
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from gateway.state.apply import Unit, refold_careteam
from gateway.state.careteam import careteam_id
from tests.messages import Adt

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


def test_a_first_heard_patients_circle_is_the_one_a_search_finds(db: Engine, mapping_engine: MappingEngine) -> None:
    """The circle of a patient first heard of takes his stays from the identity map, without the search:
    refolded again once he is stored (through the search), it is the same circle, and nothing is written."""
    pipeline = Pipeline(engine=mapping_engine, db=db, clock=lambda: NOW)
    outcome = pipeline.ingest(
        Adt(control_id="F-1", ipp="700001", visit="V-7001", movement="M-7").bytes(), transport="t"
    )
    assert outcome.code == "AA", outcome.ack_text
    [patient_id] = [r.id for r in outcome.changed if r.type == "Patient"]
    with unit_of_work(db) as uow:
        team = uow.resources.get("CareTeam", careteam_id(patient_id))
        assert team is not None
        stay_members = [p for p in team.content.get("participant", []) if p.get("period", {}).get("start")]
        assert stay_members  # the stay's doctors and unit, found without a search
        unit = Unit.of(uow, now=NOW, message_id=0, tables=mapping_engine.tables)
        refold_careteam(unit, patient_id)
        assert unit.result.changed == []
