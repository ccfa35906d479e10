"""Request dependencies: the runtime, and ``authorize``, the edge of authentication and authorization.

``authorize`` is an application-wide dependency: every route goes through it. It looks the route up in
the rule table (``gateway/auth/rules.py``; no rule, no access), authenticates the caller when the rule
is not open, checks the client's kind and the token's SMART scopes, and hands the route an
:class:`Access`, whose repositories filter what the caller sees. The audit records gathered during the
request are written when it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.auth.policy import LOCAL, Access, Principal
from gateway.auth.rules import Rule, rule_for
from gateway.errors import ForbiddenError
from gateway.runtime import Runtime

#: With no client registered, these prefixes still need the API token when one is set (the old behaviour).
#: That covers the console and the sandbox tenants' store too (operators' areas).
API_TOKEN_PREFIXES = ("/fhir", "/admin", "/console", "/sandbox/store")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _principal(runtime: Runtime, request: Request, rule: Rule) -> Principal:
    if rule.open:
        return LOCAL
    authorization = request.headers.get("authorization")
    if runtime.gate.enabled():
        return runtime.gate.principal(authorization)
    if runtime.settings.api_token and request.url.path.startswith(API_TOKEN_PREFIXES):
        return runtime.gate.principal(authorization)
    return LOCAL


def _check(rule: Rule, principal: Principal, request: Request) -> None:
    if rule.open:
        return
    if principal.kind not in rule.kinds:
        raise ForbiddenError(f"a {principal.kind} client may not call this route")
    if rule.resource is None or rule.permission is None:
        return
    resource = rule.resource
    if resource == "{rtype}":
        params = request.path_params
        resource = str(params.get("rtype") or params.get("type") or params.get("resource_type") or "")
    if not principal.grant.allows(resource, rule.permission):
        raise ForbiddenError(f"the token's scopes do not allow system/{resource}.{rule.permission}")


async def authorize(request: Request, runtime: RuntimeDep) -> AsyncIterator[Access]:
    route = request.scope.get("route")
    path = str(getattr(route, "path", ""))
    rule = rule_for(request.method, path)
    if rule is None:
        raise ForbiddenError(f"no authorization rule for {request.method} {path}: refused")
    principal = await run_in_threadpool(_principal, runtime, request, rule)
    _check(rule, principal, request)
    access = Access(principal, confidential_allowed=runtime.settings.confidential_platform_access)
    try:
        yield access
    finally:
        if access.trail.records:
            await run_in_threadpool(access.trail.flush, runtime.db)


#: One dependency object for the app-wide edge and the routes' ``access`` parameter (resolved once per
#: request). ``scope="function"``: the audit records are written before the response leaves, so a caller
#: never holds data whose access is not yet recorded.
AUTHORIZE = Depends(authorize, scope="function")
AccessDep = Annotated[Access, AUTHORIZE]
