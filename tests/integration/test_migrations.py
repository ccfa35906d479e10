"""The Alembic migrations build exactly the schema the code declares (on SQLite and PostgreSQL)."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from gateway.db.engine import migrate
from gateway.db.schema import metadata


def test_migrated_schema_matches_the_declared_tables(db: Engine) -> None:
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrating_twice_is_harmless(db: Engine) -> None:
    migrate(db)
    with db.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0003_nde"
