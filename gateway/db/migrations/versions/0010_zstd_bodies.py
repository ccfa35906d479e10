"""bodies in Zstandard (codecs 3 and 4): a revision of its own, so that an older gateway refuses the store

From here the gateway writes new resource, version, fact and message bodies with the zstd codecs 3 and 4
(``gateway/db/bodies.py``) and reads the deflate codecs 1 and 2 forever. The schema does not change, and
upgrade rewrites nothing. The revision is what stops a gateway from before codecs 3 and 4 starting on a
store this one wrote (Alembic does not know it), where it would refuse those rows on every read.

Downgrade writes every zstd body again with the deflate codec of the same kind (3 → 1, 4 → 2), byte for
byte as the older gateway wrote them, page by page so that memory stays bounded; it reads and writes each
such row once (minutes per million rows).

Revision ID: 0010_zstd_bodies
Revises: 0009_compact_index
Create Date: 2026-12-02 00:30:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from gateway.db import bodies

revision = "0010_zstd_bodies"
down_revision = "0009_compact_index"
branch_labels = None
depends_on = None

#: each table with a ``body`` column, and its primary key
_TABLES = {
    "messages": ("id",),
    "resources": ("type", "id"),
    "resource_versions": ("type", "id", "version_id"),
    "facts": ("id",),
}
#: the deflate codec each zstd codec goes back to (literals: what 0010 introduced, whatever later
#: revisions make ``bodies.CURRENT``)
_BACK = {3: 1, 4: 2}
PAGE = 1000


def upgrade() -> None:
    """Nothing to rewrite: the new codecs are for new rows."""


def downgrade() -> None:
    conn = op.get_bind()
    first_byte = "get_byte(body, 0)" if conn.dialect.name == "postgresql" else "unicode(substr(body, 1, 1))"
    codecs = ", ".join(str(c) for c in _BACK)
    for table, key in _TABLES.items():
        columns, where = ", ".join(key), " AND ".join(f"{k} = :k_{k}" for k in key)
        # table and column names are the constants above, never input
        page = sa.text(
            f"SELECT {columns}, body FROM {table}"  # noqa: S608
            f" WHERE body IS NOT NULL AND {first_byte} IN ({codecs}) LIMIT {PAGE}"
        )
        body = sa.bindparam("body", type_=sa.LargeBinary)
        rewrite = sa.text(f"UPDATE {table} SET body = :body WHERE {where}").bindparams(body)  # noqa: S608
        while rows := conn.execute(page).all():
            conn.execute(rewrite, [_deflated(row, key) for row in rows])


def _deflated(row: sa.Row[Any], key: tuple[str, ...]) -> dict[str, object]:
    body = bytes(row[-1])
    values: dict[str, object] = {f"k_{k}": row[i] for i, k in enumerate(key)}
    values["body"] = bodies.deflated(bodies.decode(body), codec=_BACK[body[0]])
    return values
