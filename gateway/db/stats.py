"""Read-only figures for ``/metrics``: outbox backlog, subscriptions by status, the connection pool.

Kept apart from the repositories: scrapes read these every few seconds and must stay cheap (one grouped
query each, on indexed columns).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.pool import QueuePool

from gateway.db.repo import utc
from gateway.db.schema import outbox, subscriptions


def store_figures(engine: Engine) -> tuple[list[tuple[str, int, datetime]], dict[str, int]]:
    """([(subscription, pending rows, oldest pending occurred_at)], {subscription status: count})."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.subscription_id, func.count(), func.min(outbox.c.occurred_at))
            .where(outbox.c.status == "pending")
            .group_by(outbox.c.subscription_id)
        ).all()
        statuses = conn.execute(select(subscriptions.c.status, func.count()).group_by(subscriptions.c.status)).all()
    backlog = [(str(sub), int(count), utc(oldest) or datetime.min) for sub, count, oldest in rows if oldest]
    return backlog, {str(status): int(count) for status, count in statuses}


def pool_figures(engine: Engine) -> dict[str, int]:
    """The pool's size and use (PostgreSQL's QueuePool); SQLite's pool has no such figures."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return {}
    return {"size": pool.size(), "checked_out": pool.checkedout(), "overflow": max(0, pool.overflow())}
