"""resources, resource_versions, facts: ``body``, the resource or fact deflated (gateway/db/bodies.py)

New rows carry their JSON in ``body`` and an empty ``content``; rows written before keep their text in
``content`` and are read as they are, so the upgrade rewrites nothing (a store of millions of versions
upgrades at once). A resource's current row is compacted the next time it changes.

Revision ID: 0004_bodies
Revises: 0003_nde
Create Date: 2026-12-01 11:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_bodies"
down_revision = "0003_nde"
branch_labels = None
depends_on = None

TABLES = ("resources", "resource_versions", "facts")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("body", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Deflated rows cannot be kept by a schema without ``body``: downgrading loses them, so refuse.
    bind = op.get_bind()
    for table in TABLES:
        rows = sa.table(table, sa.column("body"))
        if bind.execute(sa.select(sa.literal(1)).where(rows.c.body.is_not(None)).limit(1)).first():
            raise RuntimeError(f"{table} holds deflated bodies: a downgrade below 0004 would lose them")
        with op.batch_alter_table(table) as batch:
            batch.drop_column("body")
