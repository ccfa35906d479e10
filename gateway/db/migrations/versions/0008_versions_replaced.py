"""resource_versions holds only the versions that were replaced; the current one lives in resources alone

Until 0007 every version, the current one included, was in ``resource_versions``, so each resource's
current body was stored twice. From here a write inserts the row it replaces (as it was read) into
``resource_versions`` and a new resource inserts none; ``vread`` and ``_history`` read the current version
from ``resources`` and the older ones from ``resource_versions`` (``ResourceRepo``).

Upgrade deletes each ``resource_versions`` row that is its resource's current version (same type, id and
version); downgrade copies the current rows of ``resources`` back. Neither rewrites a body: a row keeps its
``content`` and ``body`` as they are. On PostgreSQL the deleted rows' space is reused by later inserts once
(auto)vacuum has seen them; nothing here waits for it.

Measured on PostgreSQL (``bench/store_size.py --messages 400``): see bench/README.md.

Revision ID: 0008_versions_replaced
Revises: 0007_narrow_indexes
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_versions_replaced"
down_revision = "0007_narrow_indexes"
branch_labels = None
depends_on = None

#: each version row that is also its resource's current row
_DELETE_CURRENT = """
DELETE FROM resource_versions
WHERE EXISTS (
    SELECT 1 FROM resources r
    WHERE r.type = resource_versions.type AND r.id = resource_versions.id
      AND r.version_id = resource_versions.version_id
)
"""

#: each resource's current row, back among the versions (none of them is there at 0008)
_COPY_CURRENT = """
INSERT INTO resource_versions (type, id, version_id, last_updated, deleted, content, body)
SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.content, r.body
FROM resources r
WHERE NOT EXISTS (
    SELECT 1 FROM resource_versions v WHERE v.type = r.type AND v.id = r.id AND v.version_id = r.version_id
)
"""


def upgrade() -> None:
    op.execute(sa.text(_DELETE_CURRENT))


def downgrade() -> None:
    op.execute(sa.text(_COPY_CURRENT))
