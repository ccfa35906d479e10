"""The Alembic migrations build exactly the schema the code declares (on SQLite and PostgreSQL)."""

from datetime import UTC, datetime

import orjson
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, insert, select

from gateway.db.engine import alembic_config, migrate
from gateway.db.repo import ResourceRepo
from gateway.db.schema import metadata, resource_versions, resources


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
