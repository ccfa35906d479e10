"""Access tokens and client authentication for ``POST /oauth/token`` (OAuth 2.0 client credentials).

Access tokens are HS256 JWTs signed and checked by PyJWT. The key is shared by every instance on the
same database: ``GATEWAY_TOKEN_SIGNING_KEY`` when the operator sets one, else a random key stored in the
``signing_keys`` table by the first instance that needs it. Only the gateway checks its own tokens, so a
symmetric key is enough and nothing has to be published.

Clients authenticate with their secret (HTTP Basic or form fields, RFC 6749 2.3.1) or, when registered
with a JWKS, with a ``private_key_jwt`` assertion as SMART Backend Services send it (RFC 7523): signed
with one of their keys, ``iss`` = ``sub`` = client id, ``aud`` = the token URL, at most five minutes of
life, and a ``jti`` used once.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

import jwt

from gateway.auth.hashing import verify_secret
from gateway.auth.scopes import Grant, ScopeError, parse_scopes
from gateway.config import Settings
from gateway.db.access import AssertionRepo, ClientRecord, ClientRepo, SigningKeyRepo
from gateway.db.engine import Database as Engine
from gateway.db.engine import transaction
from gateway.errors import AuthenticationError, InvalidClientError, OAuthError

ALGORITHM = "HS256"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART Backend Services require RS384 and ES384; RS256 and ES256 are common enough to accept too.
ASSERTION_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256", "PS384", "PS256")
MAX_ASSERTION_LIFETIME = timedelta(minutes=5)
LEEWAY = timedelta(seconds=30)
DEFAULT_TOKEN_LIFETIME = 300
SHARED_KID = "shared-1"


#: Without ``GATEWAY_BASE_URL`` the public base depends on the host (and on a proxy's headers): instances
#: sharing a database would disagree on it and refuse each other's tokens, so a constant stands in.
DEFAULT_AUDIENCE = "urn:hl7-fhir-gateway:fhir"
DEFAULT_ISSUER = "urn:hl7-fhir-gateway"


def token_audience(settings: Settings) -> str:
    return settings.base_url.rstrip("/") or DEFAULT_AUDIENCE


def token_issuer(settings: Settings) -> str:
    return settings.public_origin() if settings.base_url else DEFAULT_ISSUER


@dataclass(frozen=True, slots=True)
class Issued:
    access_token: str
    expires_in: int
    scope: str


@dataclass(frozen=True, slots=True)
class Claims:
    client_id: str
    scopes: tuple[str, ...]


class TokenService:
    """Built once per process; loads the signing key on first use and keeps it."""

    def __init__(self, db: Engine, *, issuer: str, audience: str, lifetime: int, key: str = "") -> None:
        self.db = db
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self._key: tuple[str, str] | None = ("config", key) if key else None
        self._lock = threading.Lock()

    def _signing_key(self, *, now: datetime) -> tuple[str, str]:
        with self._lock:
            if self._key is None:
                with transaction(self.db) as conn:
                    keys = SigningKeyRepo(conn)
                    if keys.current() is None:
                        # One fixed kid: two instances racing to create the key collide on the primary key,
                        # and the loser reads the winner's, so every instance signs with the same key.
                        keys.add(SHARED_KID, secrets.token_urlsafe(48), now=now)
                    self._key = keys.current()
            assert self._key is not None
            return self._key

    def issue(self, client: ClientRecord, scopes: list[str], *, now: datetime) -> Issued:
        kid, key = self._signing_key(now=now)
        scope = " ".join(scopes)
        claims = {
            "iss": self.issuer,
            "sub": client.id,
            "aud": self.audience,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + self.lifetime,
            "jti": uuid.uuid4().hex,
            "scope": scope,
        }
        token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
        return Issued(token, self.lifetime, scope)

    def verify(self, token: str, *, now: datetime) -> Claims:
        """Signature, algorithm, expiry, issuer and audience; the client itself is checked by the caller."""
        _, key = self._signing_key(now=now)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("the access token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationError("the access token is not for this server") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError("the access token is invalid") from exc
        return Claims(str(claims["sub"]), tuple(str(claims.get("scope", "")).split()))


# -- client authentication -------------------------------------------------------------------------


def _basic(authorization: str) -> tuple[str, str] | None:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidClientError("malformed HTTP Basic credentials") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClientError("malformed HTTP Basic credentials")
    return unquote(client_id), unquote(secret)


def _active(client: ClientRecord | None) -> ClientRecord:
    if client is None or client.status != "active":
        raise InvalidClientError("unknown or revoked client")
    return client


def _by_secret(engine: Engine, client_id: str, secret: str) -> ClientRecord:
    with engine.connect() as conn:
        client = ClientRepo(conn).get(client_id)
    client = _active(client)
    if client.secret_hash is None or not verify_secret(secret, client.secret_hash):
        raise InvalidClientError("client authentication failed")
    return client


def _assertion_key(client: ClientRecord, assertion: str) -> Any:
    try:
        kid = jwt.get_unverified_header(assertion).get("kid")
    except jwt.PyJWTError as exc:
        raise InvalidClientError("the client assertion is not a JWT") from exc
    keys = jwt.PyJWKSet.from_dict(client.jwks or {"keys": []}).keys
    for key in keys:
        if kid is None or key.key_id == kid:
            return key
    raise InvalidClientError("no registered key matches the assertion's kid")


def _by_assertion(engine: Engine, assertion: str, *, token_urls: list[str], now: datetime) -> ClientRecord:
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidClientError("the client assertion is not a JWT") from exc
    client_id = str(unverified.get("iss", ""))
    with engine.connect() as conn:
        client = _active(ClientRepo(conn).get(client_id))
    if client.jwks is None:
        raise InvalidClientError("this client is not registered for private_key_jwt")
    key = _assertion_key(client, assertion)
    try:
        claims = jwt.decode(
            assertion,
            key,
            algorithms=list(ASSERTION_ALGORITHMS),
            audience=token_urls,
            issuer=client_id,
            leeway=LEEWAY,
            options={"require": ["exp", "iss", "sub", "aud", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidClientError(f"client assertion refused: {exc}") from exc
    expires = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
    if claims["sub"] != client_id:
        raise InvalidClientError("the assertion's sub must be the client id")
    if expires - now > MAX_ASSERTION_LIFETIME + LEEWAY:
        raise InvalidClientError("a client assertion may live five minutes at most")
    with transaction(engine) as conn:
        if not AssertionRepo(conn).use(client_id, str(claims["jti"]), expires_at=expires + LEEWAY, now=now):
            raise InvalidClientError("this client assertion (jti) was already used")
    return client


def authenticate_client(
    engine: Engine, form: dict[str, str], *, authorization: str, token_urls: list[str], now: datetime
) -> ClientRecord:
    """The client of a token request, by Basic credentials, form secret or signed assertion."""
    if form.get("client_assertion") or form.get("client_assertion_type"):
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise InvalidClientError(f"client_assertion_type must be {ASSERTION_TYPE}")
        return _by_assertion(engine, form.get("client_assertion", ""), token_urls=token_urls, now=now)
    basic = _basic(authorization) if authorization else None
    if basic is not None:
        return _by_secret(engine, *basic)
    if form.get("client_id") and form.get("client_secret"):
        return _by_secret(engine, form["client_id"], form["client_secret"])
    raise InvalidClientError("client authentication is required")


def granted_scopes(client: ClientRecord, requested: str | None) -> list[str]:
    """The requested scopes if all are within the client's grant; all of the grant when none is asked."""
    if not requested or not requested.strip():
        return list(client.scopes)
    try:
        wanted = parse_scopes([requested])
    except ScopeError as exc:
        raise OAuthError("invalid_scope", str(exc)) from exc
    grant = Grant(client.scopes)
    refused = [s for s in wanted if not grant.covers(s)]
    if refused:
        raise OAuthError("invalid_scope", f"not granted to this client: {' '.join(refused)}")
    return wanted
