"""The client registry's use cases (``gateway clients add|list|rotate|revoke|authorities``).

Three kinds of client: a **platform** (e-parcours platform: subscriptions, reads of the patients it
follows), a **sender** (a hospital integration engine: ADT for its registered facilities) and an
**operator** (everything, including the audit trail). A client authenticates with a secret (shown once,
stored hashed) or, when registered with a JWKS, with signed assertions (SMART Backend Services).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from jwt import PyJWKSet
from jwt.exceptions import PyJWKSetError

from gateway.auth.hashing import hash_secret, new_secret
from gateway.auth.scopes import SANDBOX, SANDBOX_TENANT, ScopeError, parse_scopes
from gateway.db.access import ClientNameTakenError, ClientRecord, ClientRepo
from gateway.db.engine import DbConnection as Connection
from gateway.errors import ConfigError

PLATFORM, SENDER, OPERATOR = "platform", "sender", "operator"
KINDS = (PLATFORM, SENDER, OPERATOR)
#: Scopes a client gets when ``--scope`` is not given.
DEFAULT_SCOPES: dict[str, tuple[str, ...]] = {
    PLATFORM: (
        "system/Patient.rs",
        "system/Encounter.rs",
        "system/CareTeam.rus",
        "system/Practitioner.rs",
        "system/Subscription.cruds",
        "system/Basic.rs",
        "system/CommunicationRequest.rs",
    ),
    # a hospital system: ADT over HTTP/MLLP (no scope needed) and NdE event declarations (flux 3)
    SENDER: ("system/CommunicationRequest.c",),
    OPERATOR: ("system/*.cruds",),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
#: An assigning authority as PID-3.4 carries it: an OID, or a namespace^universal id^type triple (& in ER7).
_AUTHORITY = re.compile(r"^[^\s=|^~\\]{1,200}$")


@dataclass(frozen=True, slots=True)
class NewClient:
    record: ClientRecord
    secret: str | None  # shown once


def _check_jwks(jwks: Any) -> dict[str, Any]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ConfigError("a JWKS file must hold a JSON object with a non-empty 'keys' list")
    if any("d" in key for key in jwks["keys"] if isinstance(key, dict)):
        raise ConfigError("the JWKS holds a private key: register the public keys only")
    try:
        PyJWKSet.from_dict(jwks)
    except PyJWKSetError as exc:
        raise ConfigError(f"unusable JWKS: {exc}") from exc
    return jwks


def parse_authorities(pairs: list[str]) -> dict[str, str]:
    """``AUTHORITY=SYSTEM`` pairs → mapping (``CHU-X&000897406&N=urn:oid:1.2.250.1.71.4.2.7``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        authority, sep, system = pair.partition("=")
        authority, system = authority.strip(), system.strip()
        if not sep or not _AUTHORITY.match(authority) or not system:
            raise ConfigError(f"expected AUTHORITY=SYSTEM, got {pair!r}")
        if not system.startswith(("urn:oid:", "urn:uuid:", "http://", "https://")):
            raise ConfigError(f"identifier system must be a URI (urn:oid:…, https://…): {system!r}")
        out[authority] = system
    return out


def add_client(
    conn: Connection,
    *,
    kind: str,
    name: str,
    now: datetime,
    facilities: list[str] | None = None,
    scopes: list[str] | None = None,
    jwks: Any = None,
    authorities: dict[str, str] | None = None,
    sandbox: bool = False,
) -> NewClient:
    """``sandbox``: a sender whose HTTP and MLLP messages go to the isolated sandbox store (a tenant)."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}")
    if not _NAME.match(name):
        raise ConfigError("a name is 1-64 letters, digits, spaces, '.', '_' or '-'")
    if kind == SENDER and not facilities:
        raise ConfigError("a sender needs at least one --facility (the MSH-4 it sends as)")
    try:
        checked = parse_scopes(scopes) if scopes else list(DEFAULT_SCOPES[kind])
    except ScopeError as exc:
        raise ConfigError(str(exc)) from exc
    if sandbox:
        _check_sandbox_sender(conn, kind, facilities or [])
        checked = list(dict.fromkeys([*checked, SANDBOX, SANDBOX_TENANT]))
    secret = None if jwks is not None else new_secret()
    record = ClientRecord(
        id=uuid.uuid4().hex,
        kind=kind,
        name=name,
        secret_hash=hash_secret(secret) if secret else None,
        jwks=_check_jwks(jwks) if jwks is not None else None,
        scopes=tuple(checked),
        facilities=tuple(dict.fromkeys(f.strip() for f in facilities or [] if f.strip())),
        authorities=authorities or {},
    )
    try:
        ClientRepo(conn).add(record, now=now)
    except ClientNameTakenError as exc:
        raise ConfigError(f"a client named {name!r} already exists") from exc
    return NewClient(replace(record, created_at=now), secret)


def _check_sandbox_sender(conn: Connection, kind: str, facilities: list[str]) -> None:
    """A sandbox facility is nobody's real facility: else a plain-MLLP message from it could not be told apart."""
    if kind != SENDER:
        raise ConfigError("--sandbox marks a sender (its messages go to the sandbox store)")
    real = {f for c in ClientRepo(conn).list() if c.kind == SENDER and not is_sandbox_sender(c) for f in c.facilities}
    shared = sorted(real & {f.strip() for f in facilities})
    if shared:
        raise ConfigError(f"facility {', '.join(shared)} is a real sender's: a sandbox sender needs its own")


def is_sandbox_sender(record: ClientRecord) -> bool:
    return record.kind == SENDER and SANDBOX_TENANT in record.scopes


def sandbox_facilities(records: list[ClientRecord]) -> frozenset[str]:
    """The MSH-4 values whose messages go to the sandbox store: the active sandbox senders' facilities."""
    return frozenset(f for c in records if c.status == "active" and is_sandbox_sender(c) for f in c.facilities)


def _existing(conn: Connection, client_id: str) -> ClientRecord:
    record = ClientRepo(conn).get(client_id)
    if record is None:
        raise ConfigError(f"no client {client_id!r}")
    return record


def rotate_secret(conn: Connection, client_id: str, *, now: datetime) -> str:
    """A new secret replaces the old one at once; tokens already issued live out their short life."""
    record = _existing(conn, client_id)
    if record.jwks is not None:
        raise ConfigError("this client signs assertions with its keys: register a new JWKS instead")
    secret = new_secret()
    ClientRepo(conn).set_secret(client_id, hash_secret(secret), now=now)
    return secret


def revoke(conn: Connection, client_id: str) -> None:
    """Revoked at once: its tokens are refused from the next request (every request reads the client)."""
    _existing(conn, client_id)
    ClientRepo(conn).set_status(client_id, "revoked")


def set_authorities(conn: Connection, client_id: str, updates: dict[str, str]) -> dict[str, str]:
    record = _existing(conn, client_id)
    if record.kind != SENDER:
        raise ConfigError("identifier domains belong to senders")
    merged = {**record.authorities, **updates}
    ClientRepo(conn).set_authorities(client_id, merged)
    return merged


def public_view(record: ClientRecord) -> dict[str, Any]:
    """What ``clients list`` shows: never a secret nor its hash."""
    return {
        "client_id": record.id,
        "kind": record.kind,
        "name": record.name,
        "status": record.status,
        "auth": "private_key_jwt" if record.jwks is not None else "client_secret",
        "scope": " ".join(record.scopes),
        "facilities": list(record.facilities),
        "sandbox": is_sandbox_sender(record),
        "authorities": record.authorities,
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "rotated_at": record.rotated_at.isoformat() if record.rotated_at else None,
    }
