"""SQL of the pages' browser sessions (:mod:`gateway.auth.sessions` decides what a session is and when it ends).

Why in the database: a balancer may send a browser's next request to another instance; a session kept in one
process's memory would sign it out there. The id itself is never stored, only its SHA-256, so reading the table
opens no session.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, insert, select

from gateway.clock import as_utc
from gateway.db.engine import reading, transaction
from gateway.db.schema import browser_sessions


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A signed-in browser: who (the client, as a token would name it), its CSRF token, when it ends
    (wall-clock seconds, compared by every instance alike)."""

    id: str
    client_id: str
    name: str
    kind: str
    csrf: str
    expires_at: float


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class DatabaseSessions:
    """:class:`gateway.auth.sessions.SessionBackend` on the gateway's store; expired rows go at each sign-in."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    def put(self, session: SessionRecord) -> None:
        row = {
            "id_sha256": _key(session.id),
            "client_id": session.client_id,
            "name": session.name,
            "kind": session.kind,
            "csrf": session.csrf,
            "expires_at": _at(session.expires_at),
        }
        with transaction(self.db) as conn:
            conn.execute(delete(browser_sessions).where(browser_sessions.c.expires_at <= datetime.now(UTC)))
            conn.execute(insert(browser_sessions).values(**row))

    def get(self, session_id: str) -> SessionRecord | None:
        with reading(self.db) as conn:
            row = conn.execute(select(browser_sessions).where(browser_sessions.c.id_sha256 == _key(session_id))).first()
        if row is None:
            return None
        expires = as_utc(row.expires_at) or datetime.now(UTC)
        return SessionRecord(
            id=session_id,
            client_id=row.client_id,
            name=row.name,
            kind=row.kind,
            csrf=row.csrf,
            expires_at=expires.timestamp(),
        )

    def delete(self, session_id: str) -> None:
        with transaction(self.db) as conn:
            conn.execute(delete(browser_sessions).where(browser_sessions.c.id_sha256 == _key(session_id)))
