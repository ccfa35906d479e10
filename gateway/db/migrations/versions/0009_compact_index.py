"""search index entries keyed by a (type, param) code; on PostgreSQL, ids and references as bytes;
messages.content_sha256 as its 32 bytes

``search_index`` held (type, param, value, id, system) as text, its primary key the same five columns:
on PostgreSQL 274 bytes an entry (heap and key), 27.5 entries a message, 58 % of the store. From here
(type, param) is one smallint ``code`` (``gateway/db/indexing.py`` ``PARAM_CODES``), and on PostgreSQL
``id`` and ``value`` are ``bytea``: a deterministic id (32 hex digits) in 16 bytes, a reference to one
in 17 (``indexing.id_key``, ``indexing.value_key``); other ids and values keep their UTF-8 text. SQLite
keeps text for both (its joins with ``resources.id`` need no conversion), with the code.

Upgrade and downgrade copy every row, converted, into the table of the other shape (keyset pages, memory
flat on a large store): what the index answers is unchanged, and a row of a (type, param) that has no code
(a type no search is declared for: none could read it) is not copied. The rows are the same extraction
(``indexing.text_rows`` gives the shape before), so nothing needs rebuilding from the resources.

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

import sqlalchemy as sa
from alembic import op

from gateway.db.indexing import PARAM_CODES
from gateway.db.schema import IndexId, IndexValue

revision = "0009_compact_index"
down_revision = "0008_versions_replaced"
branch_labels = None
depends_on = None

#: rows copied per page
BATCH = 5000
_TEXT_KEY = ("type", "param", "value", "id", "system")
_CODED_KEY = ("code", "value", "id", "system")
_PAIRS = {code: pair for pair, code in PARAM_CODES.items()}


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


def _pages(bind: Any, table: sa.Table, key: tuple[str, ...]) -> Iterator[list[Any]]:
    """Every row of ``table`` in primary key order, a page at a time (keyset pagination)."""
    columns = [table.c[name] for name in key]
    query = sa.select(*columns).order_by(*columns).limit(BATCH)
    after: Any = None
    while True:
        page = bind.execute(query if after is None else query.where(sa.tuple_(*columns) > sa.tuple_(*after))).all()
        if page:
            yield page
        if len(page) < BATCH:
            return
        after = tuple(page[-1])


def _copy(
    source: sa.Table, key: tuple[str, ...], target: sa.Table, convert: Callable[[Any], dict[str, Any] | None]
) -> None:
    bind = op.get_bind()
    for page in _pages(bind, source, key):
        rows = [row for row in map(convert, page) if row is not None]
        if rows:
            bind.execute(target.insert(), rows)


def _coded(row: Any) -> dict[str, Any] | None:
    rtype, param, value, rid, system = row
    code = PARAM_CODES.get((rtype, param))
    return None if code is None else {"code": code, "value": value, "id": rid, "system": system}


def _text(row: Any) -> dict[str, Any]:
    code, value, rid, system = row
    rtype, param = _PAIRS[code]
    return {"type": rtype, "param": param, "value": value, "id": rid, "system": system}


def _swap(old: sa.Table, new: sa.Table, key: tuple[str, ...], convert: Callable[[Any], Any]) -> None:
    """``new`` (created under a temporary name) filled from ``old``, which it then replaces."""
    bind = op.get_bind()
    new.create(bind)
    _copy(old, key, new, convert)
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
    _swap(_text_table("search_index"), _coded_table("search_index_0009"), _TEXT_KEY, _coded)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE messages ALTER COLUMN content_sha256 TYPE bytea USING decode(content_sha256, 'hex')")
    else:
        _digests_as_bytes(bind)


def downgrade() -> None:
    _swap(_coded_table("search_index"), _text_table("search_index_0008"), _CODED_KEY, _text)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE messages ALTER COLUMN content_sha256 TYPE varchar(64) USING encode(content_sha256, 'hex')"
        )
    else:
        op.execute(
            "UPDATE messages SET content_sha256 = lower(hex(content_sha256)) WHERE typeof(content_sha256) = 'blob'"
        )
