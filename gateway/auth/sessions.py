"""Browser sessions for the pages (console, sandbox): a server-side session behind an opaque cookie, and CSRF.

Why server-side: signing out, or revoking the client, ends the session at once (a signed cookie would live
out its lifetime), and the cookie carries nothing but a random id. A session maps to the same
:class:`~gateway.auth.policy.Principal` a bearer token does (``Gate.session_principal``), so the rule table
and the policy decide what it may do, exactly as for a token.

Every state-changing request made with a session must present the session's CSRF token (the hidden
``csrf_token`` field of the page's forms, or the ``X-CSRF-Token`` header of the page's fetches): the cookie is
``SameSite=Strict`` already, the token is the second lock. The sign-in form itself carries a nonce signed with
itsdangerous and repeated in a short-lived cookie, so another site cannot sign a browser in as someone else.

Sessions live in this process's memory: a restart signs everyone out, and several instances behind one name
need a sticky balancer (documented in the README).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.errors import AuthenticationError

SESSION_COOKIE = "gateway_session"
SIGN_IN_COOKIE = "gateway_sign_in"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Sessions kept at most; the oldest is dropped first (its browser signs in again).
MAX_SESSIONS = 10_000
#: Seconds a sign-in form stays usable.
SIGN_IN_MAX_AGE = 600


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    client_id: str
    name: str
    kind: str
    csrf: str
    expires_at: float


class SignInRequired(AuthenticationError):
    """A page asked for without credentials: the browser is sent to the sign-in page, not shown a 401."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in to see this page", error="invalid_request")
        self.next_path = next_path


class SessionStore:
    """Sessions by id, each with an absolute lifetime (no sliding: a stolen cookie dies on schedule)."""

    def __init__(self, *, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        # a key per process, as the sessions themselves: a form from before a restart is simply refused
        self._forms = URLSafeTimedSerializer(secrets.token_bytes(32), salt="gateway-sign-in")

    def open(self, *, client_id: str, name: str, kind: str) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            client_id=client_id,
            name=name,
            kind=kind,
            csrf=secrets.token_urlsafe(32),
            expires_at=self.clock() + self.lifetime,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= self.clock():
                del self._sessions[session_id]
                return None
        return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

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
