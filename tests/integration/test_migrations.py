"""The Alembic migrations build exactly the schema the code declares (on SQLite and PostgreSQL)."""

from datetime import UTC, datetime
from typing import Any

import orjson
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, insert, inspect, select

from gateway.db.engine import alembic_config, migrate
from gateway.db.repo import FactRepo, MessageRepo, ResourceRepo
from gateway.db.schema import messages, metadata, resource_versions, resources
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from tests.messages import Adt


def test_migrated_schema_matches_the_declared_tables(db: Engine) -> None:
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def _single_head() -> str:
    """The newest revision; branches merged in parallel must leave exactly one head."""
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"several Alembic heads: {heads}"
    return heads[0]


def test_migrating_twice_is_harmless(db: Engine) -> None:
    migrate(db)
    with db.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _single_head()


def test_rows_written_before_0004_are_read_and_compacted_when_they_change(db: Engine) -> None:
    """0004_bodies rewrites nothing: a row with JSON in ``content`` and no ``body`` is read as it is, and
    its next version is stored deflated."""
    old = {"resourceType": "Patient", "id": "p-0003", "meta": {"versionId": "1"}, "active": True}
    values = {"type": "Patient", "id": "p-0003", "version_id": 1, "deleted": 0, "content": orjson.dumps(old).decode()}
    with db.begin() as conn:
        stamp = {"last_updated": datetime(2026, 1, 1, tzinfo=UTC)}
        conn.execute(insert(resources).values(**values, **stamp))
        conn.execute(insert(resource_versions).values(**values, **stamp))
    with db.begin() as conn:
        repo = ResourceRepo(conn)
        found = repo.get("Patient", "p-0003")
        assert found is not None and found.content == old
        repo.write({**old, "active": False}, now=datetime(2026, 1, 2, tzinfo=UTC), index=[])
    with db.connect() as conn:
        rows = conn.execute(select(resource_versions.c.version_id, resource_versions.c.body)).all()
        repo = ResourceRepo(conn)
        assert repo.vread("Patient", "p-0003", 1).content == old  # type: ignore[union-attr]
        assert repo.get("Patient", "p-0003").content["active"] is False  # type: ignore[union-attr]
    assert [(v, body is None) for v, body in sorted(rows)] == [(1, True), (2, False)]


def _move(db: Engine, revision: str, *, down: bool = False) -> None:
    cfg = alembic_config(db.url.render_as_string(hide_password=False))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _answers(db: Engine) -> dict[str, Any]:
    """What the store answers: every resource and its history, searches through the index (a lookup, a
    second criterion, a date comparison and sort), each stream's facts, and the duplicate check."""
    out: dict[str, Any] = {}
    with db.connect() as conn:
        repo, facts, sent = ResourceRepo(conn), FactRepo(conn), MessageRepo(conn)
        for rtype, rid in conn.execute(
            select(resources.c.type, resources.c.id).order_by(resources.c.type, resources.c.id)
        ):
            out[f"{rtype}/{rid}"] = [(r.version_id, r.content) for r in repo.history(rtype, rid)]
            out[f"facts {rtype}/{rid}"] = facts.of(f"{rtype}/{rid}")
            if rtype == "Patient":
                ref = f"Patient/{rid}"
                for criteria in ([("patient", None, ref)], [("patient", None, ref), ("status", None, "finished")]):
                    found, total = repo.search("Encounter", criteria, limit=50, order=[("date", True)])
                    out[f"search {criteria}"] = ([r.id for r in found], total)
        found, total = repo.search(
            "CareTeam", [("status", None, "active")], limit=50, dates=[("date", "ge", "2026-01-01")]
        )
        out["careteams"] = (sorted(r.id for r in found), total)
        keys = conn.execute(select(messages.c.sending_application, messages.c.sending_facility, messages.c.control_id))
        out["applied"] = sorted(
            (control, record.id if record else None)
            for app, facility, control in keys
            for record in [sent.find_applied(sending_application=app, sending_facility=facility, control_id=control)]
        )
    return out


def test_0007_keeps_what_a_store_with_data_answers(db: Engine, mapping_engine: MappingEngine) -> None:
    """A store filled at 0006 answers the same after 0007 (and after going back down and up again); 0007
    only changes which indexes exist."""
    _move(db, "0006_compact_store", down=True)
    try:
        pipeline = Pipeline(engine=mapping_engine, db=db)
        for i in range(4):
            stay = {"ipp": f"77{i:04d}", "visit": f"V-77{i}"}
            admit = Adt(control_id=f"M{i}-A", movement=f"MA{i}", **stay)
            discharge = Adt(trigger="A03", control_id=f"M{i}-D", movement=f"MD{i}", event_time="20260302100000",
                            discharge_time="20260302100000", **stay)  # fmt: skip
            for message in (admit, discharge):
                assert pipeline.ingest(message.bytes(), transport="t").code == "AA"
        before = _answers(db)
        searches = [v for k, v in before.items() if k.startswith("search")]
        assert len(searches) == 8 and all(total > 0 for _, total in searches) and before["careteams"][1] > 0
        _move(db, "head")
        assert _answers(db) == before
        indexes = {i["name"]: i["column_names"] for i in inspect(db).get_indexes("facts")}
        assert indexes["ix_facts_stream"] == ["stream"]
        _move(db, "0006_compact_store", down=True)
        assert _answers(db) == before
    finally:
        _move(db, "head")
    assert _answers(db) == before
