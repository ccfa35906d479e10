"""subscriptions: dialect (Backport or ANS NdE), start and end of validity

Revision ID: 0003_nde
Revises: 0001
Create Date: 2026-12-01 08:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_nde"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "subscriptions", sa.Column("dialect", sa.String(length=16), nullable=False, server_default="backport")
    )
    op.add_column("subscriptions", sa.Column("start_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("subscriptions", sa.Column("end_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("end_at")
        batch.drop_column("start_at")
        batch.drop_column("dialect")
