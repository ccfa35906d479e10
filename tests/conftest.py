"""Shared fixtures: settings and a migrated store per test, on SQLite and (marked ``postgres``) PostgreSQL.

PostgreSQL: ``GATEWAY_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``) is
the admin connection; one throw-away database is created per session and emptied between tests. When
it cannot be reached the PostgreSQL tests are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.db.schema import metadata
from gateway.mapping.engine import Engine as MappingEngine

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
FIXTURES = ROOT / "fixtures"
PG_ADMIN_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden/ from the current output (review the diff after)",
    )


def _pg_required() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def mapping_engine() -> MappingEngine:
    return MappingEngine.from_directory(MAPPINGS)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated once; dropped at the end."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        message = f"PostgreSQL unreachable at {make_url(PG_ADMIN_URL).render_as_string(hide_password=True)}: {exc}"
        if _pg_required():
            pytest.fail(f"{message} (CI=true: the PostgreSQL suite is required)", pytrace=False)
        pytest.skip(message)
    name = f"gateway_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(Settings(database_url=url))
    migrate(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store migrated once for the session: each test's store is a copy of this file.

    Migrating runs alembic (~40 ms of CPU a store); copying the file takes a fraction of a millisecond and
    gives the same schema and ``alembic_version`` (tests/integration/test_migrations.py migrates its own).
    """
    path = tmp_path_factory.mktemp("sqlite-template") / "gateway.db"
    engine = make_engine(Settings(database_url=f"sqlite:///{path}"))
    migrate(engine)
    engine.dispose()  # the last connection closed checkpoints the WAL into the file and removes it
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert not leftovers, f"the migrated template left {leftovers} beside it"
    return path


@pytest.fixture(scope="session")
def pg_cleaner(pg_database: str) -> Iterator[Engine]:
    """One engine for the session's emptying of the PostgreSQL database (not one connection per test)."""
    engine = make_engine(Settings(database_url=pg_database))
    yield engine
    engine.dispose()


#: The tables a test may have written, with the sequences they own: a table with any page on disk (a row
#: rolled back leaves one too), or one whose sequence has been drawn from.
_WRITTEN = """
SELECT t.relname FROM pg_class t
WHERE t.relnamespace = current_schema()::regnamespace AND t.relkind = 'r' AND t.relname = ANY(:tables)
  AND (pg_relation_size(t.oid) > 0 OR EXISTS (
    SELECT 1 FROM pg_depend d JOIN pg_class q ON q.oid = d.objid AND q.relkind = 'S'
    JOIN pg_sequences s ON s.schemaname = current_schema() AND s.sequencename = q.relname
    WHERE d.refobjid = t.oid AND s.last_value IS NOT NULL))
"""


def _truncate(engine: Engine) -> None:
    """``TRUNCATE … RESTART IDENTITY`` of the tables a test wrote: the same empty store as truncating every
    table, at the cost of those written only (TRUNCATE takes ~5 ms a table on the server)."""
    tables = [t.name for t in metadata.sorted_tables]
    with engine.begin() as conn:
        written = list(conn.execute(text(_WRITTEN), {"tables": tables}).scalars())
        if written:
            conn.execute(text(f"TRUNCATE {', '.join(written)} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty store: a copy of the session's migrated SQLite file, or the session's PostgreSQL
    database emptied."""
    if request.param == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("pg_database")
    _truncate(request.getfixturevalue("pg_cleaner"))
    yield url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        mappings_dir=MAPPINGS,
        endpoint_allowlist=["127.0.0.1", "localhost", "platform.test"],
        worker_poll_interval=0.05,
        retry_base=0.01,
        retry_cap=0.05,
        mllp_port=0,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    yield engine
    engine.dispose()
