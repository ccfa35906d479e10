"""The one authorization point: who the caller is (:class:`Principal`) and what it may see (:class:`Visibility`).

Routes never test tenants: they build their repositories from :class:`Access` (``access.resources(conn)``,
``access.subscriptions(conn)``), and the repositories filter every query by the caller's visibility.

- an **operator** sees everything;
- a **platform** sees its own subscriptions, and the patients it follows (named by its subscriptions'
  filters, or whose care circle holds a member it added) with their encounters and care circles;
  with the ``gateway/population`` scope, every patient. Patients under PAM-FR protection (PD1-12 = Y,
  label ``R``) stay hidden unless the operator relaxed it (``GATEWAY_CONFIDENTIAL_PLATFORM_ACCESS``) or
  granted ``gateway/confidential``;
- a **sender** sees nothing through FHIR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth.audit import AuditTrail
from gateway.auth.clients import OPERATOR, PLATFORM, SENDER
from gateway.auth.scopes import CONFIDENTIAL, POPULATION, Grant
from gateway.db.access import EVERYTHING, FollowRepo, Visibility
from gateway.db.engine import DbConnection as Connection
from gateway.db.repo import ResourceRepo, SubscriptionRepo
from gateway.subscriptions.topics import TOPICS

#: topic URL → the resource type it is about (which a filter's ``identifier`` names)
TOPIC_RESOURCES = {t.url: t.resource for t in TOPICS}


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    name: str
    kind: str
    grant: Grant
    facilities: tuple[str, ...] = ()
    #: False in the local mode (no client registered, auth not required): today's open behaviour
    authenticated: bool = True
    #: a sender whose messages go to the isolated sandbox store (``clients add --sandbox``): read from the
    #: registry, never from the token, so a token asked with fewer scopes cannot send to real data
    sandbox_tenant: bool = False

    def holds(self, gateway_scope: str) -> bool:
        """Operators hold every gateway scope (they grant them); other clients only those registered."""
        return self.kind == OPERATOR or self.grant.has(gateway_scope)


#: No client registered and GATEWAY_AUTH not required: the local, single-tenant mode of old.
LOCAL = Principal("local", "local", OPERATOR, Grant(("system/*.cruds",)), authenticated=False)


def visibility(conn: Connection, principal: Principal, *, confidential_allowed: bool) -> Visibility:
    if principal.kind == OPERATOR:
        return EVERYTHING
    if principal.kind != PLATFORM:
        return Visibility(owner=principal.client_id, open_types=frozenset())
    confidential = confidential_allowed or principal.grant.has(CONFIDENTIAL)
    population = principal.grant.has(POPULATION)
    follows = FollowRepo(conn)
    patients: set[str] = set()
    if not population:
        patients = follows.followed(owner=principal.client_id, platform=principal.name, topic_resources=TOPIC_RESOURCES)
        if not confidential:
            patients -= follows.confidential(patients)
    return Visibility(
        patients=frozenset(patients), all_patients=population, owner=principal.client_id, confidential=confidential
    )


@dataclass
class Access:
    """One request's caller, and the repositories it may use (filtered, and heard by the audit trail)."""

    principal: Principal
    confidential_allowed: bool = False
    trail: AuditTrail = field(init=False)
    _visibility: Visibility | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.trail = AuditTrail(self.principal)

    def visibility(self, conn: Connection) -> Visibility:
        if self._visibility is None:
            self._visibility = visibility(conn, self.principal, confidential_allowed=self.confidential_allowed)
        return self._visibility

    def resources(self, conn: Connection) -> ResourceRepo:
        return ResourceRepo(conn, visibility=self.visibility(conn), audit=self.trail.heard)

    def subscriptions(self, conn: Connection) -> SubscriptionRepo:
        owner = None if self.principal.kind == OPERATOR else self.principal.client_id
        return SubscriptionRepo(conn, owner=owner)

    @property
    def owner(self) -> str:
        """The owner recorded on a new subscription ("" for operators: theirs belong to no platform)."""
        return self.principal.client_id if self.principal.kind == PLATFORM else ""

    @property
    def may_select_population(self) -> bool:
        return self.principal.kind == OPERATOR or self.principal.grant.has(POPULATION)

    @property
    def sender_facilities(self) -> frozenset[str] | None:
        """MSH-4 values an authenticated sender may claim; None (unchecked) for operators and local mode."""
        return frozenset(self.principal.facilities) if self.principal.kind == SENDER else None

    @property
    def platform_name(self) -> str | None:
        """The platform a care circle edit is recorded under: the authenticated client's name."""
        return self.principal.name if self.principal.kind == PLATFORM else None
