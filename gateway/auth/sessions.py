"""Browser sessions for the pages (console, sandbox): a server-side session behind an opaque cookie, and CSRF.

Why server-side: signing out, or revoking the client, ends the session at once (a signed cookie would live
out its lifetime), and the cookie carries nothing but a random id. A session maps to the same
:class:`~gateway.auth.policy.Principal` a bearer token does (``Gate.session_principal``), so the rule table
and the policy decide what it may do, exactly as for a token.

Every state-changing request made with a session must present the session's CSRF token (the hidden
``csrf_token`` field of the page's forms, or the ``X-CSRF-Token`` header of the page's fetches): the cookie is
``SameSite=Strict`` already, the token is the second lock. The sign-in form itself carries a nonce signed with
itsdangerous and repeated in a short-lived cookie, so another site cannot sign a browser in as someone else.

Where sessions live is a :class:`SessionBackend`: the gateway keeps them in its database
(:class:`gateway.db.sessions.DatabaseSessions`), so that several instances on one PostgreSQL serve the same
browser whichever one a balancer picks, and a restart signs nobody out; :class:`MemorySessions` is the
in-process one the unit tests use. The sign-in form's key is shared the same way (derived from the
token-signing key every instance reads from the database), so a form served by one instance can be posted to
another.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl

from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.db.sessions import SessionRecord
from gateway.errors import AuthenticationError

#: A signed-in browser (the record the database keeps).
Session = SessionRecord

SESSION_COOKIE = "gateway_session"
SIGN_IN_COOKIE = "gateway_sign_in"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Sessions kept at most; the oldest is dropped first (its browser signs in again).
MAX_SESSIONS = 10_000
#: Longest cookie value taken as a session id (ours are 43 characters); anything longer is no session of ours.
MAX_SESSION_ID = 128
#: Seconds a sign-in form stays usable.
SIGN_IN_MAX_AGE = 600


class SignInRequired(AuthenticationError):
    """A page asked for without credentials: the browser is sent to the sign-in page, not shown a 401."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in to see this page", error="invalid_request")
        self.next_path = next_path


class SessionBackend(Protocol):
    """Where sessions are kept, by id; expiry is the store's business, not the backend's."""

    def put(self, session: Session) -> None: ...

    def get(self, session_id: str) -> Session | None: ...

    def delete(self, session_id: str) -> None: ...


class MemorySessions:
    """This process's sessions, the oldest dropped past :data:`MAX_SESSIONS` (one instance, or tests)."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session: Session) -> None:
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


class SessionStore:
    """Sessions by id, each with an absolute lifetime (no sliding: a stolen cookie dies on schedule).

    ``clock`` is wall-clock seconds (several instances compare the same expiry); ``form_key`` gives the
    sign-in forms' signing key, read when first needed (default: a key of this store's own).
    """

    def __init__(
        self,
        *,
        lifetime: float,
        backend: SessionBackend | None = None,
        form_key: Callable[[], bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self.backend: SessionBackend = backend if backend is not None else MemorySessions()
        own = secrets.token_bytes(32)
        self._form_key = form_key or (lambda: own)
        self._form_serializer: URLSafeTimedSerializer | None = None

    @property
    def _forms(self) -> URLSafeTimedSerializer:
        if self._form_serializer is None:
            self._form_serializer = URLSafeTimedSerializer(self._form_key(), salt="gateway-sign-in")
        return self._form_serializer

    def open(self, *, client_id: str, name: str, kind: str) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            client_id=client_id,
            name=name,
            kind=kind,
            csrf=secrets.token_urlsafe(32),
            expires_at=self.clock() + self.lifetime,
        )
        self.backend.put(session)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > MAX_SESSION_ID:
            return None
        session = self.backend.get(session_id)
        if session is not None and session.expires_at <= self.clock():
            self.backend.delete(session_id)
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= MAX_SESSION_ID:
            self.backend.delete(session_id)

    def sign_in_form(self) -> tuple[str, str]:
        """(nonce for the cookie, signed token for the form's hidden field)."""
        nonce = secrets.token_urlsafe(24)
        return nonce, self._forms.dumps(nonce)

    def sign_in_form_ok(self, token: str, nonce: str | None) -> bool:
        """The form's token is ours, recent, and names the nonce this browser's cookie holds."""
        if not nonce:
            return False
        try:
            signed = self._forms.loads(token, max_age=SIGN_IN_MAX_AGE)
        except BadSignature:
            return False
        return isinstance(signed, str) and hmac.compare_digest(signed.encode(), nonce.encode())


FORM = "application/x-www-form-urlencoded"
#: The pages' forms are a few fields; a bigger body is no form of ours.
MAX_FORM_BYTES = 16_384


def is_form(media: str) -> bool:
    return media.split(";", maxsplit=1)[0].strip().lower() == FORM


def parse_form(media: str, raw: bytes) -> dict[str, str]:
    """A page's URL-encoded form (the only kind our forms send); anything else, or too big, is no form."""
    if not is_form(media) or len(raw) > MAX_FORM_BYTES:
        return {}
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return {}


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), (presented or "").encode())
