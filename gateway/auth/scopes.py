"""SMART v2 scopes (``system/Patient.rs``, ``system/*.cruds``): parsing, and whether a grant covers a need.

Only the ``system/`` context exists here: every caller is a backend service (SMART Backend Services).
SMART v1 suffixes (``.read``, ``.write``, ``.*``) are read as their v2 equivalents, as the SMART guide asks
servers to. A few gateway scopes stand beside them (``POPULATION``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Lets a platform subscribe to patients nobody named (a whole facility, every admission), and so read them.
POPULATION = "gateway/population"
#: Lets a platform read and be notified about patients under PAM-FR protection (PD1-12 = Y).
CONFIDENTIAL = "gateway/confidential"
#: Lets a client use the sandbox (``/sandbox/convert``, ``/sandbox/report``, its own ``/sandbox/store``).
SANDBOX = "gateway/sandbox"
#: Marks a sender as a sandbox tenant (``gateway clients add --kind sender --sandbox``): its HTTP and MLLP
#: messages go to the isolated sandbox store, never to real data. Read from the registry, not the token.
SANDBOX_TENANT = "gateway/sandbox-tenant"
GATEWAY_SCOPES = frozenset({POPULATION, CONFIDENTIAL, SANDBOX, SANDBOX_TENANT})
PERMISSIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^system/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perms>[cruds]+|read|write|\*)$")


class ScopeError(ValueError):
    """A scope that is not SMART ``system/<Type|*>.<cruds>`` nor a gateway scope."""


@dataclass(frozen=True, slots=True)
class Scope:
    resource: str  # a FHIR type or "*"
    permissions: frozenset[str]

    def covers(self, resource: str, permission: str) -> bool:
        return self.resource in ("*", resource) and permission in self.permissions


def parse_scope(text: str) -> Scope | None:
    """A resource scope, or None for a gateway scope; anything else raises :class:`ScopeError`."""
    if text in GATEWAY_SCOPES:
        return None
    found = _SCOPE.match(text)
    if found is None:
        raise ScopeError(f"not a SMART system scope: {text!r}")
    perms = found["perms"]
    letters = _V1.get(perms, perms)
    if list(letters) != sorted(set(letters), key=PERMISSIONS.index):
        raise ScopeError(f"permissions must be in the order c, r, u, d, s without repeats: {text!r}")
    return Scope(found["type"], frozenset(letters))


def parse_scopes(texts: Iterable[str]) -> list[str]:
    """Checked scope strings, de-duplicated, in their given order."""
    out: list[str] = []
    for text in texts:
        for part in text.split():
            parse_scope(part)
            if part not in out:
                out.append(part)
    return out


@dataclass(frozen=True, slots=True)
class Grant:
    """The scopes a token carries."""

    scopes: tuple[str, ...]

    def allows(self, resource: str, permission: str) -> bool:
        return any(s is not None and s.covers(resource, permission) for s in map(parse_scope, self.scopes))

    def has(self, gateway_scope: str) -> bool:
        return gateway_scope in self.scopes

    def covers(self, requested: str) -> bool:
        """Whether a requested scope is within this grant (``system/*.rs`` covers ``system/Patient.r``)."""
        wanted = parse_scope(requested)
        if wanted is None:
            return requested in self.scopes
        types = {wanted.resource} if wanted.resource != "*" else {"*"}
        granted = [s for s in map(parse_scope, self.scopes) if s is not None and s.resource in types | {"*"}]
        return all(any(p in g.permissions for g in granted) for p in wanted.permissions)
