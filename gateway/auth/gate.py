"""Authentication at the edge: is it on, and who is behind this ``Authorization`` header."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from gateway.auth.clients import OPERATOR
from gateway.auth.policy import Principal
from gateway.auth.scopes import Grant
from gateway.auth.tokens import TokenService
from gateway.config import Settings
from gateway.db.access import ClientRepo
from gateway.db.engine import Database as Engine
from gateway.errors import AuthenticationError

API_TOKEN_PRINCIPAL = Principal("api-token", "operator (API token)", OPERATOR, Grant(("system/*.cruds",)))


class Gate:
    """Authentication is on once a client is registered (or GATEWAY_AUTH=required), and then stays on."""

    def __init__(self, db: Engine, settings: Settings, tokens: TokenService) -> None:
        self.db = db
        self.settings = settings
        self.tokens = tokens
        self._on = settings.auth_required

    def enabled(self) -> bool:
        if not self._on:
            with self.db.connect() as conn:
                self._on = ClientRepo(conn).any()
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
        with self.db.connect() as conn:
            client = ClientRepo(conn).get(claims.client_id)
        if client is None or client.status != "active":
            raise AuthenticationError("the token's client is unknown or revoked")
        return Principal(client.id, client.name, client.kind, Grant(claims.scopes), client.facilities)
