"""Who may call which route: ONE table, keyed by (method, route path as declared), read at the edge.

A route without an entry is refused (403) and fails ``tests/integration/test_authorization_matrix.py``.
Adding a route means adding one line here: the kinds of client allowed, and the SMART scope it needs
(``"{rtype}"`` stands for the route's own ``rtype`` path parameter). What a client then *sees* is the
policy's business (``gateway/auth/policy.py``), applied by the repositories, never by the route.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.clients import OPERATOR, PLATFORM, SENDER
from gateway.auth.scopes import GATEWAY_SCOPES, SANDBOX


@dataclass(frozen=True, slots=True)
class Rule:
    #: kinds of client allowed; empty means open to anyone, without a token
    kinds: frozenset[str]
    #: FHIR type the SMART scope must name ("{rtype}": the route's rtype, type or resource_type path
    #: parameter), or None for no scope check
    resource: str | None = None
    #: the SMART permission letter needed (c, r, u, d or s)
    permission: str | None = None
    #: a gateway scope needed (``gateway/sandbox``); operators hold every gateway scope
    gateway_scope: str | None = None

    @property
    def open(self) -> bool:
        return not self.kinds


def allow(*kinds: str, scope: str | None = None) -> Rule:
    """``allow(PLATFORM, OPERATOR, scope="Patient.r")``, or a gateway scope: ``scope="gateway/sandbox"``."""
    if scope is None:
        return Rule(frozenset(kinds))
    if scope in GATEWAY_SCOPES:
        return Rule(frozenset(kinds), gateway_scope=scope)
    resource, _, permission = scope.partition(".")
    return Rule(frozenset(kinds), resource, permission)


OPEN = Rule(frozenset())
FHIR_READERS = (PLATFORM, OPERATOR)
ANY_CLIENT = (PLATFORM, SENDER, OPERATOR)

RULES: dict[tuple[str, str], Rule] = {
    # open: discovery, token, liveness
    ("GET", "/health"): OPEN,
    ("GET", "/health/live"): OPEN,
    ("GET", "/health/ready"): OPEN,
    ("GET", "/.well-known/smart-configuration"): OPEN,
    ("POST", "/oauth/token"): OPEN,
    ("GET", "/fhir/metadata"): OPEN,
    # operations
    ("GET", "/metrics"): allow(OPERATOR),
    # ingest and the sandbox (a throw-away store: nothing stored, nothing of others shown)
    ("POST", "/hl7v2"): allow(SENDER, OPERATOR),
    ("POST", "/sandbox/convert"): allow(*ANY_CLIENT, scope=SANDBOX),
    ("POST", "/sandbox/report"): allow(*ANY_CLIENT, scope=SANDBOX),
    ("GET", "/sandbox/samples"): OPEN,
    # the sandbox tenants' isolated store: operators see all of it, a sandbox sender its own messages
    ("GET", "/sandbox/store/messages"): allow(SENDER, OPERATOR, scope=SANDBOX),
    ("GET", "/sandbox/store/messages/{message_id}"): allow(SENDER, OPERATOR, scope=SANDBOX),
    # pages: the sandbox and the API docs (their assets are local, served from /static)
    ("GET", "/sandbox"): OPEN,
    ("GET", "/docs"): OPEN,
    # browser sign-in (a session cookie for the pages); the form checks its own signed nonce
    ("GET", "/sign-in"): OPEN,
    ("POST", "/sign-in"): OPEN,
    ("POST", "/sign-out"): allow(*ANY_CLIENT),
    # the operators' console
    ("GET", "/console"): allow(OPERATOR),
    ("GET", "/console/messages"): allow(OPERATOR),
    ("GET", "/console/messages/{message_id}"): allow(OPERATOR),
    ("POST", "/console/messages/{message_id}/replay"): allow(OPERATOR),
    ("GET", "/console/subscriptions"): allow(OPERATOR),
    ("POST", "/console/subscriptions/{sub_id}/resend"): allow(OPERATOR),
    ("GET", "/console/live"): allow(OPERATOR),
    ("GET", "/console/live/data"): allow(OPERATOR),
    # subscriptions
    ("POST", "/fhir/Subscription"): allow(*FHIR_READERS, scope="Subscription.c"),
    ("PUT", "/fhir/Subscription/{sub_id}"): allow(*FHIR_READERS, scope="Subscription.u"),
    ("DELETE", "/fhir/Subscription/{sub_id}"): allow(*FHIR_READERS, scope="Subscription.d"),
    ("GET", "/fhir/Subscription/$status"): allow(*FHIR_READERS, scope="Subscription.r"),
    ("GET", "/fhir/Subscription/{sub_id}/$status"): allow(*FHIR_READERS, scope="Subscription.r"),
    ("GET", "/fhir/Subscription/{sub_id}/$events"): allow(*FHIR_READERS, scope="Subscription.r"),
    # ANS NdE: event declarations (flux 3) and notification orders (flux 4) posted by emitting systems
    ("POST", "/fhir/CommunicationRequest"): allow(SENDER, OPERATOR, scope="CommunicationRequest.c"),
    # care circle edits
    ("PUT", "/fhir/CareTeam/{team_id}"): allow(*FHIR_READERS, scope="CareTeam.u"),
    ("POST", "/fhir/CareTeam/{team_id}/$add-member"): allow(*FHIR_READERS, scope="CareTeam.u"),
    ("POST", "/fhir/CareTeam/{team_id}/$end-member"): allow(*FHIR_READERS, scope="CareTeam.u"),
    # topics
    ("GET", "/fhir/Basic"): allow(*FHIR_READERS, scope="Basic.s"),
    ("GET", "/fhir/Basic/{topic_id}"): allow(*FHIR_READERS, scope="Basic.r"),
    # the audit trail
    ("GET", "/fhir/AuditEvent"): allow(OPERATOR, scope="AuditEvent.s"),
    ("GET", "/fhir/AuditEvent/{audit_id}"): allow(OPERATOR, scope="AuditEvent.r"),
    # generic FHIR reads (what is visible is filtered by the policy)
    ("GET", "/fhir/{rtype}"): allow(*FHIR_READERS, scope="{rtype}.s"),
    ("GET", "/fhir/{rtype}/{rid}"): allow(*FHIR_READERS, scope="{rtype}.r"),
    ("GET", "/fhir/{rtype}/{rid}/_history"): allow(*FHIR_READERS, scope="{rtype}.r"),
    ("GET", "/fhir/{rtype}/{rid}/_history/{vid}"): allow(*FHIR_READERS, scope="{rtype}.r"),
    # operators
    ("GET", "/admin/messages"): allow(OPERATOR),
    ("GET", "/admin/messages/{message_id}"): allow(OPERATOR),
    ("POST", "/admin/messages/{message_id}/replay"): allow(OPERATOR),
    ("POST", "/admin/subscriptions/{sub_id}/resend"): allow(OPERATOR),
    ("GET", "/admin/authorities"): allow(OPERATOR),
}


def rule_for(method: str, path: str) -> Rule | None:
    """HEAD is a GET without a body: it needs what the GET needs."""
    return RULES.get(("GET" if method == "HEAD" else method, path))
