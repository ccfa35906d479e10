"""#13 evidence: every route of the OpenAPI document × each kind of client (and none) × own / someone
else's resource. Each call must get the status its rule implies, never a 500, and no body may carry another
tenant's data or any secret.

A route added without an entry in ``gateway/auth/rules.py`` fails ``test_every_route_has_a_rule``; a path
parameter this test has no value for fails ``test_matrix`` until one is added to ``VALUES`` below.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.auth.rules import Rule, rule_for
from gateway.runtime import Runtime
from gateway.subscriptions.topics import TOPICS
from gateway.web import console, pages, signin
from tests.auth_helpers import login, register, subscribe_as, token
from tests.messages import IPP_SYSTEM, Adt

METHODS = ("get", "post", "put", "delete", "patch", "head")
HL7 = {"Content-Type": "application/hl7-v2"}
SECRET_A = "Authorization: Bearer secret-of-platform-a"
SECRET_B = "Authorization: Bearer secret-of-platform-b"
#: path parameters whose value is a tenant's resource (the platform "other" case expects 404 on them)
OWNED = frozenset({"rid", "sub_id", "team_id"})
#: readiness says 503 here: the test app runs without its delivery worker (an answer, not a crash)
NOT_READY_OK = frozenset({"/health/ready"})
#: resource types the generic ``{rtype}`` routes are tried with (each has an own and an other instance)
TENANT_TYPES = ("Patient", "Encounter", "CareTeam", "Subscription", "CommunicationRequest")


def _routes(app: Any) -> list[tuple[str, str]]:
    spec = app.openapi()
    return sorted((m.upper(), path) for path, item in spec["paths"].items() for m in item if m in METHODS)


def test_every_route_has_a_rule(runtime: Runtime) -> None:
    missing = [f"{m} {p}" for m, p in _routes(create_app(runtime, start_services=False)) if rule_for(m, p) is None]
    assert missing == [], f"routes without an authorization rule (add them to gateway/auth/rules.py): {missing}"


def test_routes_left_out_of_the_openapi_document_have_a_rule_too() -> None:
    """The console's and the pages' routes are not in the OpenAPI document: the edge refuses them all the
    same without a rule."""
    routers = (console.router, pages.router, signin.router)
    routes = [(m, r.path) for router in routers for r in router.routes if isinstance(r, APIRoute) for m in r.methods]
    assert ("GET", "/console") in routes
    missing = [f"{m} {p}" for m, p in sorted(routes) if rule_for(m, p) is None]
    assert missing == [], f"routes without an authorization rule (add them to gateway/auth/rules.py): {missing}"


@dataclass
class Tenants:
    client: TestClient
    callers: dict[str, dict[str, str]]
    own: dict[str, str]  # path parameter → platform A's resource
    other: dict[str, str]  # path parameter → platform B's (or an unfollowed patient's) resource
    forbidden_text: dict[str, list[str]]  # caller → strings its answers must never contain
    secrets: list[str]


def _first(client: TestClient, ops: dict[str, str], rtype: str, patient: str) -> str:
    found = client.get(f"/fhir/{rtype}", params={"patient": patient}, headers=ops).json()
    return str(found["entry"][0]["resource"]["id"])


@pytest.fixture
def tenants(runtime: Runtime) -> Iterator[Tenants]:
    with TestClient(create_app(runtime, start_services=False), raise_server_exceptions=False) as client:
        ops = login(client, runtime, "operator", "ops")
        a = login(client, runtime, "platform", "PlatformA")
        b = login(client, runtime, "platform", "PlatformB")
        sender_id, sender_secret = register(runtime, "sender", "CHU", facilities=["CH-TEST"])
        sender = {"Authorization": f"Bearer {token(client, sender_id, sender_secret)}"}
        for n, ipp in enumerate(("100001", "200002")):
            assert runtime.pipeline.ingest(Adt(ipp=ipp, visit=f"V-{n}", control_id=f"M-{n}").bytes(), transport="t")
        ids = {}
        for ipp in ("100001", "200002"):
            found = client.get("/fhir/Patient", params={"identifier": f"{IPP_SYSTEM}|{ipp}"}, headers=ops).json()
            ids[ipp] = str(found["entry"][0]["resource"]["id"])
        sub_a = subscribe_as(
            client, a, "encounter-start", f"Encounter?patient.identifier={IPP_SYSTEM}|100001", header=SECRET_A
        )
        sub_b = subscribe_as(
            client, b, "encounter-start", f"Encounter?patient.identifier={IPP_SYSTEM}|200002", header=SECRET_B
        )
        common = {"vid": "1", "message_id": "1", "topic_id": TOPICS[0].code, "audit_id": "1"}
        own, other = dict(common), dict(common)
        for values, ipp, sub in ((own, "100001", sub_a), (other, "200002", sub_b)):
            values.update(sub_id=sub, team_id=_first(client, ops, "CareTeam", ids[ipp]))
            values.update({"Patient": ids[ipp], "Subscription": sub})
            values.update(
                {t: _first(client, ops, t, ids[ipp]) for t in ("Encounter", "CareTeam", "CommunicationRequest")}
            )
        secrets = [s.split(": ", 1)[1] for s in (SECRET_A, SECRET_B)] + [sender_secret or ""]
        yield Tenants(
            client,
            {"none": {}, "sender": sender, "platform": a, "operator": ops},
            own,
            other,
            {
                "platform": [other[t] for t in TENANT_TYPES],
                "sender": [v for t in TENANT_TYPES for v in (own[t], other[t])],
            },
            secrets,
        )


def _body(method: str, path: str) -> dict[str, Any]:
    if path == "/hl7v2" or path.startswith("/sandbox"):
        return {"content": Adt(control_id="MATRIX", ipp="900009").bytes(), "headers": HL7}
    if path == "/oauth/token":
        return {"data": {"grant_type": "client_credentials"}}
    if method in ("POST", "PUT", "PATCH"):
        return {"json": {}}
    return {}


def _expected(rule: Rule, caller: str, *, owned: bool, whose: str) -> set[int] | None:
    """The statuses allowed; None: any non-401/403/500 answer (the route's own business)."""
    if not rule.kinds:
        return None
    if caller == "none":
        return {401}
    if caller not in rule.kinds:
        return {403}
    if rule.gateway_scope is not None and caller != "operator":
        return {403}  # the matrix's clients have their kind's default scopes: no gateway scope
    if caller == "platform" and owned and whose == "other":
        return {404}
    return None


def _cases(params: list[str]) -> list[tuple[str, str]]:
    """(whose, rtype) pairs: others' first, since the own case may delete its resource."""
    types = TENANT_TYPES if {"rtype", "type"} & set(params) else ("Patient",)
    return [(whose, rtype) for whose in ("other", "own") for rtype in types]


def test_matrix(tenants: Tenants, runtime: Runtime) -> None:
    app = tenants.client.app
    failures: list[str] = []
    # deletions last: an operator's DELETE of the other tenant's subscription would hide later checks
    for method, template in sorted(_routes(app), key=lambda route: route[0] == "DELETE"):
        rule = rule_for(method, template)
        assert rule is not None
        params = re.findall(r"{(\w+)}", template)
        for whose, rtype in _cases(params):
            values = {**(tenants.other if whose == "other" else tenants.own), "rtype": rtype, "type": rtype}
            if "rid" in params:
                values["rid"] = values[rtype]
            unknown = [p for p in params if p not in values]
            assert not unknown, f"{method} {template}: add a value for {unknown} to the matrix fixture"
            path = template.format(**{p: values[p] for p in params})
            for caller, headers in tenants.callers.items():
                kwargs = _body(method, template)
                kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
                answer = tenants.client.request(method, path, **kwargs)
                expected = _expected(rule, caller, owned=bool(OWNED & set(params)), whose=whose)
                where = f"{caller} {method} {path} ({whose}) → {answer.status_code}"
                if answer.status_code >= 500 and not (answer.status_code == 503 and template in NOT_READY_OK):
                    failures.append(f"{where}: server error")
                elif expected is not None and answer.status_code not in expected:
                    failures.append(f"{where}: expected {sorted(expected)}")
                elif expected is None and not rule.open and answer.status_code in (401, 403):
                    failures.append(f"{where}: refused but the rule allows it")
                text = answer.text
                # an id the caller put in the URL may come back in "X/<id> not found": that is no leak
                leaked = [s for s in tenants.forbidden_text.get(caller, []) if s in text and s not in path]
                leaked += [s for s in tenants.secrets if s and s in text]
                if leaked:
                    failures.append(f"{where}: body carries {leaked}")
    assert failures == [], "\n".join(failures)
