"""Authentication at the edge: is it on, and who is behind this ``Authorization`` header."""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime

from gateway.auth.clients import OPERATOR, SENDER
from gateway.auth.policy import Principal
from gateway.auth.scopes import SANDBOX_TENANT, Grant
from gateway.auth.sessions import Session, SessionStore
from gateway.auth.tokens import TokenService, authenticate_client
from gateway.config import Settings
from gateway.db.access import ClientRecord, ClientRepo, registrations
from gateway.db.engine import Database as Engine
from gateway.db.sessions import DatabaseSessions
from gateway.errors import AuthenticationError, OAuthError

#: A client registered by another process (``gateway clients add``) turns authentication on within this.
OFF_RECHECK_SECONDS = 1.0
API_TOKEN_PRINCIPAL = Principal("api-token", "operator (API token)", OPERATOR, Grant(("system/*.cruds",)))


def principal_of(client: ClientRecord, scopes: tuple[str, ...] | list[str]) -> Principal:
    """A registered client as a caller, with the scopes of its token (or all it was granted)."""
    tenant = client.kind == SENDER and SANDBOX_TENANT in client.scopes
    grant = Grant(tuple(scopes))
    return Principal(client.id, client.name, client.kind, grant, client.facilities, sandbox_tenant=tenant)


class Gate:
    """Authentication is on once a client is registered (or GATEWAY_AUTH=required), and then stays on."""

    def __init__(self, db: Engine, settings: Settings, tokens: TokenService) -> None:
        self.db = db
        self.settings = settings
        self.tokens = tokens
        self._on = settings.auth_required
        self._off_until = 0.0
        self._off_generation = -1
        self.sessions = SessionStore(
            lifetime=settings.session_lifetime,
            backend=DatabaseSessions(db),
            form_key=lambda: tokens.derived_key("gateway-sign-in-forms"),
        )

    def enabled(self) -> bool:
        """Asked for every MLLP message and HTTP request: "off" is believed for ``OFF_RECHECK_SECONDS``
        (or until this process registers a client), not read from the store each time."""
        if self._on:
            return True
        now, generation = time.monotonic(), registrations()
        if now < self._off_until and generation == self._off_generation:
            return False
        with self.db.connect() as conn:
            self._on = ClientRepo(conn).any()
        self._off_until, self._off_generation = now + OFF_RECHECK_SECONDS, generation
        return self._on

    def principal(self, authorization: str | None) -> Principal:
        """The caller behind a bearer token; every failure is a 401 :class:`AuthenticationError`."""
        if not authorization:
            raise AuthenticationError("a bearer token is required (POST /oauth/token)", error="invalid_request")
        if not authorization.isascii():
            raise AuthenticationError("the Authorization header must be ASCII")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("expected 'Authorization: Bearer <token>'", error="invalid_request")
        expected = self.settings.api_token
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            return API_TOKEN_PRINCIPAL
        claims = self.tokens.verify(token, now=datetime.now(UTC))
        return self._client_principal(claims.client_id, claims.scopes, what="token")

    def _client_principal(self, client_id: str, scopes: tuple[str, ...] | None, *, what: str) -> Principal:
        """The registered client behind a token or a session, read at each request: a revoked client is
        refused from its next request. ``scopes`` None: the client's whole registered grant (sessions)."""
        with self.db.connect() as conn:
            client = ClientRepo(conn).get(client_id)
        if client is None or client.status != "active":
            raise AuthenticationError(f"the {what}'s client is unknown or revoked")
        return principal_of(client, client.scopes if scopes is None else scopes)

    def sign_in(self, client_id: str, secret: str) -> Principal:
        """The sign-in page's check: a client's id and secret (as ``POST /oauth/token`` checks them), or,
        with no client id, the operator's ``API_TOKEN``. Every failure is the same 401, whatever was wrong."""
        expected = self.settings.api_token
        if not client_id:
            if expected and secret and hmac.compare_digest(secret.encode(), expected.encode()):
                return API_TOKEN_PRINCIPAL
            raise AuthenticationError("sign-in failed: check the client id and secret")
        form = {"client_id": client_id, "client_secret": secret}
        try:
            client = authenticate_client(self.db, form, authorization="", token_urls=[], now=datetime.now(UTC))
        except OAuthError as exc:
            raise AuthenticationError("sign-in failed: check the client id and secret") from exc
        return principal_of(client, client.scopes)

    def session_principal(self, session: Session) -> Principal:
        """A session stands for its client exactly as a token would (the API token's session for the
        operator shortcut, as long as that token is still configured)."""
        if session.client_id == API_TOKEN_PRINCIPAL.client_id:
            if not self.settings.api_token:
                raise AuthenticationError("the API token this session was opened with is no longer set")
            return API_TOKEN_PRINCIPAL
        return self._client_principal(session.client_id, None, what="session")
