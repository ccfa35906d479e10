"""search index keyed by its lookup (one B-tree, no owner index), aliases, dates by owner; messages deflated

``search_index`` becomes a table whose primary key is the lookup (type, param, value, id, system),
``WITHOUT ROWID`` on SQLite: before, the rows were stored three times (the table, ``ix_search_lookup``,
``ix_search_owner``), 48 % of the store. A date parameter's row is keyed by its owner (empty value,
the instant where a token's system goes), and the aliases of ``gateway/db/indexing.py`` (``patient`` =
``subject``, a circle's ``start`` = ``date``) are no longer stored twice. Writes delete exactly the
entries of the version they replace, recomputed from its content, so the index must be what the
current extraction gives: the upgrade rebuilds it from every current resource (``reindex_all``), and so
must any later change to what is extracted.

``messages.body``: new rows keep the raw message and its ACK deflated there (``raw`` empty, ``ack``
null); rows written before keep both columns and are read as they are (nothing is rewritten).

Revision ID: 0006_compact_store
Revises: 0005_sessions
Create Date: 2026-12-01 13:50:00
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

from gateway.db import bodies
from gateway.db.indexing import ALIASES, Entry, search_entries, text_rows

revision = "0006_compact_store"
down_revision = "0005_sessions"
branch_labels = None
depends_on = None

#: resources read per batch while rebuilding (keyset pagination: memory stays flat on a large store)
BATCH = 2000


def _current(bind: Any) -> Iterator[tuple[str, str, Any]]:
    """(type, id, resource) of every resource not deleted, in primary key order, a batch at a time."""
    rows = sa.table("resources", *(sa.column(c) for c in ("type", "id", "deleted", "content", "body")))
    after: tuple[str, str] = ("", "")
    while True:
        batch = bind.execute(
            sa.select(rows.c.type, rows.c.id, rows.c.content, rows.c.body)
            .where(rows.c.deleted == 0, sa.tuple_(rows.c.type, rows.c.id) > sa.tuple_(*after))
            .order_by(rows.c.type, rows.c.id)
            .limit(BATCH)
        ).all()
        for rtype, rid, content, body in batch:
            yield rtype, rid, orjson.loads(bodies.decode(bytes(body)) if body is not None else content)
        if len(batch) < BATCH:
            return
        after = (batch[-1][0], batch[-1][1])


def reindex_all(bind: Any) -> int:
    """Fill the (empty) ``search_index`` from every current resource; returns the rows written. A later
    migration that changes what is extracted empties the table and calls it again."""
    index = sa.table("search_index", *(sa.column(c) for c in ("type", "param", "value", "id", "system")))
    rows: list[dict[str, str]] = []
    written = 0
    for rtype, rid, resource in _current(bind):
        rows += text_rows(rtype, rid, search_entries(resource)).values()
        if len(rows) >= 10 * BATCH:
            written += _flush(bind, index, rows)
    return written + _flush(bind, index, rows)


def _flush(bind: Any, table: Any, rows: list[dict[str, str]]) -> int:
    count = len(rows)
    if rows:
        bind.execute(table.insert(), rows)
        rows.clear()
    return count


def upgrade() -> None:
    op.add_column("messages", sa.Column("body", sa.LargeBinary(), nullable=True))
    # The old rows are not copied: the index is rebuilt from the resources, which is what it projects.
    op.drop_index("ix_search_owner", table_name="search_index")
    op.drop_index("ix_search_lookup", table_name="search_index")
    op.drop_table("search_index")
    op.create_table(
        "search_index",
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("type", "param", "value", "id", "system", name=op.f("pk_search_index")),
        sqlite_with_rowid=False,
    )
    reindex_all(op.get_bind())


def _inflate_messages(bind: Any) -> None:
    """Back to the columns before 0006: each deflated message's raw bytes and ACK in ``raw`` and ``ack``."""
    rows = sa.table("messages", *(sa.column(c) for c in ("id", "raw", "ack", "body")))
    found = bind.execute(sa.select(rows.c.id, rows.c.body).where(rows.c.body.is_not(None))).all()
    for message_id, body in found:
        raw, ack = bodies.unpacked_message(bytes(body))
        bind.execute(sa.update(rows).where(rows.c.id == message_id).values(raw=raw, ack=ack, body=None))


def _entries_before_0006(resource: Any) -> list[Entry]:
    """What the extraction stored before: every alias's entries under its own name too."""
    out = search_entries(resource)
    aliases = ALIASES.get(str(resource.get("resourceType")), {})
    return out + [(alias, s, v) for alias, target in aliases.items() for p, s, v in out if p == target]


def downgrade() -> None:
    _inflate_messages(op.get_bind())
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("body")
    op.drop_table("search_index")
    op.create_table(
        "search_index",
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.create_index("ix_search_lookup", "search_index", ["type", "param", "value"])
    op.create_index("ix_search_owner", "search_index", ["type", "id"])
    index = sa.table("search_index", *(sa.column(c) for c in ("type", "id", "param", "system", "value")))
    bind = op.get_bind()
    rows: list[dict[str, str]] = []
    for rtype, rid, resource in _current(bind):
        rows += [
            {"type": rtype, "id": rid, "param": p, "system": s[:255], "value": v[:255]}
            for p, s, v in set(_entries_before_0006(resource))
        ]
        if len(rows) >= 10 * BATCH:
            _flush(bind, index, rows)
    _flush(bind, index, rows)
