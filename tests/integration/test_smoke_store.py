"""The store fixture works on both backends (a guard for the rest of the integration suite)."""

from sqlalchemy import Engine, text


def test_store_is_migrated_and_empty(db: Engine) -> None:
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM messages")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM resources")).scalar_one() == 0
