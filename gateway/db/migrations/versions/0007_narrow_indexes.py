"""facts found by stream alone; no second index on a message's sender key

``ix_facts_stream`` was (stream, event_time), but every query of facts is by stream, ordered by id: the
event time in the key was 8 bytes an entry that no query reads. On (stream) alone PostgreSQL stores a
stream's entries as one key and a list of row pointers (B-tree deduplication), and SQLite, whose index
entries end with the rowid (``facts.id``), gives a stream's facts in id order without sorting them.

``ix_messages_sender_control`` (sending application, facility, control id) served only the duplicate
check, which asks for the applied message of a sender key: ``uq_messages_applied``, the same columns
where ``status = 'applied'``, answers it, and a message is now indexed once by its sender key, not twice.

Measured on PostgreSQL (``bench/store_size.py``): the facts index 237 → 135 bytes a message (three facts
per stream there; a real stream has more, and deduplicates further), 81 bytes a message for the index
dropped.

Revision ID: 0007_narrow_indexes
Revises: 0006_compact_store
Create Date: 2026-12-01 16:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0007_narrow_indexes"
down_revision = "0006_compact_store"
branch_labels = None
depends_on = None

_SENDER_KEY = ["sending_application", "sending_facility", "control_id"]


def upgrade() -> None:
    op.drop_index("ix_facts_stream", table_name="facts")
    op.create_index("ix_facts_stream", "facts", ["stream"])
    op.drop_index("ix_messages_sender_control", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_sender_control", "messages", _SENDER_KEY)
    op.drop_index("ix_facts_stream", table_name="facts")
    op.create_index("ix_facts_stream", "facts", ["stream", "event_time"])
