"""search index entries keyed by a (type, param) code; on PostgreSQL, ids and references as bytes;
messages.content_sha256 as its 32 bytes

``search_index`` held (type, param, value, id, system) as text, its primary key the same five columns:
on PostgreSQL 274 bytes an entry (heap and key), 27.5 entries a message, 58 % of the store. From here
(type, param) is one smallint ``code`` (``gateway/db/indexing.py`` ``PARAM_CODES``), and on PostgreSQL
``id`` and ``value`` are ``bytea``: a deterministic id (32 hex digits) in 16 bytes, a reference to one
in 17 (``indexing.id_key``, ``indexing.value_key``); other ids and values keep their UTF-8 text. SQLite
keeps text for both (its joins with ``resources.id`` need no conversion), with the code.

A national id's idNatPs forms (the number under the idNatPs OID, and 8 + RPPS / 0 + ADELI) are no longer
stored beside its RPPS / ADELI form (two rows of each professional in each care circle): a search for one
of them looks its first form up too (``indexing.lookup_forms``; the same resources are found). What is
stored changes, so upgrade and downgrade rebuild the index from every current resource
(``stored_rows``, or ``text_rows`` for the shape before), a page at a time, into a table created beside
it, which then takes its place: a few minutes per million resources, inside the migration's transaction.

``messages.content_sha256`` holds the digest's 32 bytes instead of 64 hex digits (``schema.HexDigest``):
``bytea`` on PostgreSQL (converted by ``ALTER … USING``); on SQLite the column keeps its declared type and
each row is rewritten as a BLOB (SQLite has no ``unhex`` before 3.41). Downgrade writes hex text back.

Measured on PostgreSQL (``bench/store_size.py --messages 400``): see bench/README.md.

Revision ID: 0009_compact_index
Revises: 0008_versions_replaced
Create Date: 2026-12-01 19:30:00
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

from gateway.db import bodies
from gateway.db.indexing import Entry, search_entries, stored_rows, text_rows
from gateway.db.schema import PG_FUNCTIONS, IndexId, IndexValue

revision = "0009_compact_index"
down_revision = "0008_versions_replaced"
branch_labels = None
depends_on = None

#: rows copied per page
BATCH = 5000
_TEXT_KEY = ("type", "param", "value", "id", "system")
_CODED_KEY = ("code", "value", "id", "system")


def _text_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint(*_TEXT_KEY, name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


def _coded_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("code", sa.SmallInteger(), nullable=False, autoincrement=False),
        sa.Column("value", IndexValue(255), nullable=False),
        sa.Column("id", IndexId(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint(*_CODED_KEY, name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


def _current(bind: Any) -> Iterator[tuple[str, str, Any]]:
    """(type, id, resource) of every resource not deleted, in primary key order, a page at a time."""
    rows = sa.table("resources", *(sa.column(c) for c in ("type", "id", "deleted", "content", "body")))
    after: tuple[str, str] = ("", "")
    while True:
        page = bind.execute(
            sa.select(rows.c.type, rows.c.id, rows.c.content, rows.c.body)
            .where(rows.c.deleted == 0, sa.tuple_(rows.c.type, rows.c.id) > sa.tuple_(*after))
            .order_by(rows.c.type, rows.c.id)
            .limit(BATCH)
        ).all()
        for rtype, rid, content, body in page:
            yield rtype, rid, orjson.loads(bodies.decode(bytes(body)) if body is not None else content)
        if len(page) < BATCH:
            return
        after = (page[-1][0], page[-1][1])


def _reindex(table: sa.Table, rows_of: Callable[[str, str, list[Entry]], dict[Any, dict[str, Any]]]) -> None:
    """``table`` filled from every current resource, its rows as ``rows_of`` shapes them."""
    bind = op.get_bind()
    rows: list[dict[str, Any]] = []
    for rtype, rid, resource in _current(bind):
        rows += rows_of(rtype, rid, search_entries(resource)).values()
        if len(rows) >= BATCH:
            bind.execute(table.insert(), rows)
            rows = []
    if rows:
        bind.execute(table.insert(), rows)


def _swap(old: sa.Table, new: sa.Table, rows_of: Callable[[str, str, list[Entry]], Any]) -> None:
    """``new`` (created under a temporary name) filled from the resources, then in ``old``'s place."""
    bind = op.get_bind()
    new.create(bind)
    _reindex(new, rows_of)
    old.drop(bind)
    op.rename_table(new.name, "search_index")
    if bind.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE search_index RENAME CONSTRAINT pk_{new.name} TO pk_search_index")


_MESSAGES = sa.table("messages", sa.column("id", sa.BigInteger()), sa.column("content_sha256", sa.LargeBinary()))


def _digests_as_bytes(bind: Any) -> None:
    """SQLite: every hex ``content_sha256`` rewritten as its bytes, a page of ids at a time."""
    after = 0
    while True:
        page = bind.execute(
            sa.text(
                "SELECT id, content_sha256 FROM messages WHERE id > :after AND typeof(content_sha256) = 'text'"
                " ORDER BY id LIMIT :n"
            ),
            {"after": after, "n": BATCH},
        ).all()
        if page:
            rows = [{"k": i, "v": bytes.fromhex(str(digest))} for i, digest in page]
            bind.execute(
                sa.update(_MESSAGES)
                .where(_MESSAGES.c.id == sa.bindparam("k"))
                .values(content_sha256=sa.bindparam("v")),
                rows,
            )
        if len(page) < BATCH:
            return
        after = int(page[-1][0])


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # what the index's SQL calls (schema.PG_FUNCTIONS)
        for signature, body in PG_FUNCTIONS.items():
            op.execute(f"CREATE OR REPLACE FUNCTION {signature} {body} LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE")
    _swap(_text_table("search_index"), _coded_table("search_index_0009"), stored_rows)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE messages ALTER COLUMN content_sha256 TYPE bytea USING decode(content_sha256, 'hex')")
    else:
        _digests_as_bytes(bind)


def downgrade() -> None:
    _swap(_coded_table("search_index"), _text_table("search_index_0008"), text_rows)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE messages ALTER COLUMN content_sha256 TYPE varchar(64) USING encode(content_sha256, 'hex')"
        )
        for signature in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    else:
        op.execute(
            "UPDATE messages SET content_sha256 = lower(hex(content_sha256)) WHERE typeof(content_sha256) = 'blob'"
        )
