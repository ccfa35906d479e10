"""clients, signing keys, used client assertions, audit trail; subscription owner; masked channel headers

Revision ID: 0002_clients
Revises: 0001
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002_clients"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_hash", sa.String(255), nullable=True),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("facilities", sa.Text(), nullable=False),
        sa.Column("authorities", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
        sa.UniqueConstraint("name", name=op.f("uq_clients_name")),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    op.create_table(
        "client_assertions",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_client_assertions")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("client_name", sa.String(128), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("subtype", sa.String(32), nullable=False),
        sa.Column("entity", sa.String(160), nullable=False),
        sa.Column("patient", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_patient", "audit_events", ["patient", "recorded_at"])
    op.create_index("ix_audit_client", "audit_events", ["client_id", "recorded_at"])
    op.create_index("ix_audit_recorded", "audit_events", ["recorded_at"])
    with op.batch_alter_table("subscriptions") as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default=""))
        batch_op.create_index("ix_subscriptions_owner", ["owner"])
    _mask_stored_headers()


def _mask(value: str) -> str:
    name, sep, _ = value.partition(":")
    return f"{name}: ***" if sep else "***"


def _mask_stored_headers() -> None:
    """Subscriptions stored before #13 carry their channel headers (bearer tokens) in every version."""
    conn = op.get_bind()
    for table in ("resources", "resource_versions"):
        rows = conn.execute(
            sa.text(f"SELECT type, id, version_id, content FROM {table} WHERE type = 'Subscription'")  # noqa: S608
        ).all()
        for rtype, rid, version, content in rows:
            body = json.loads(content)
            channel = body.get("channel") or {}
            if not channel.get("header"):
                continue
            channel["header"] = [_mask(str(h)) for h in channel["header"]]
            conn.execute(
                sa.text(f"UPDATE {table} SET content = :c WHERE type = :t AND id = :i AND version_id = :v"),  # noqa: S608
                {"c": json.dumps(body, sort_keys=True, separators=(",", ":")), "t": rtype, "i": rid, "v": version},
            )


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch_op:
        batch_op.drop_index("ix_subscriptions_owner")
        batch_op.drop_column("owner")
    op.drop_table("audit_events")
    op.drop_table("client_assertions")
    op.drop_table("signing_keys")
    op.drop_table("clients")
