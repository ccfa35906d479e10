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

from gateway.api.limits import read_limited
from gateway.auth.policy import LOCAL, Access, Principal
from gateway.auth.rules import Rule, rule_for
from gateway.auth.sessions import (
    CSRF_FIELD,
    CSRF_HEADER,
    MAX_FORM_BYTES,
    SAFE_METHODS,
    SESSION_COOKIE,
    Session,
    SignInRequired,
    csrf_ok,
    is_form,
    parse_form,
)
from gateway.errors import ForbiddenError
from gateway.runtime import Runtime

#: With no client registered, these prefixes still need the API token when one is set (the old behaviour).
#: That covers the console and the sandbox tenants' store too (operators' areas).
API_TOKEN_PREFIXES = ("/fhir", "/admin", "/console", "/sandbox/store")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


#: Pages a browser opens: a navigation (``Accept: text/html``) without credentials is sent to the sign-in
#: page; the pages' own fetches and API clients get the 401.
SIGN_IN_PAGES = ("/console",)


def _browsing(request: Request) -> bool:
    return request.method in SAFE_METHODS and "text/html" in request.headers.get("accept", "")


def _principal(runtime: Runtime, request: Request, rule: Rule) -> tuple[Principal, Session | None]:
    """The caller: a bearer token first, else the browser's session (``/sign-in``), else the local mode."""
    if rule.open:
        return LOCAL, None
    authorization = request.headers.get("authorization")
    session = None if authorization else runtime.gate.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        return runtime.gate.session_principal(session), session
    path = request.url.path
    if runtime.gate.enabled() or (runtime.settings.api_token and path.startswith(API_TOKEN_PREFIXES)):
        if not authorization and path.startswith(SIGN_IN_PAGES) and _browsing(request):
            raise SignInRequired(path)
        return runtime.gate.principal(authorization), None
    return LOCAL, None


async def _check_csrf(request: Request, session: Session) -> None:
    """A state-changing request made with a session carries the session's CSRF token (form field or header)."""
    if request.method in SAFE_METHODS:
        return
    presented = request.headers.get(CSRF_HEADER)
    media = request.headers.get("content-type", "")
    if presented is None and is_form(media):
        raw = await read_limited(request, limit=MAX_FORM_BYTES)  # 413 past it, never held whole in memory
        request._body = raw  # Starlette's own cache: the route may read the same body again
        presented = parse_form(media, raw).get(CSRF_FIELD)
    if not csrf_ok(session, presented):
        raise ForbiddenError("missing or wrong CSRF token: reload the page and try again")


def _check(rule: Rule, principal: Principal, request: Request) -> None:
    if rule.open:
        return
    if principal.kind not in rule.kinds:
        raise ForbiddenError(f"a {principal.kind} client may not call this route")
    if rule.gateway_scope is not None and not principal.holds(rule.gateway_scope):
        raise ForbiddenError(f"this route needs the {rule.gateway_scope} scope")
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
    principal, session = await run_in_threadpool(_principal, runtime, request, rule)
    if session is not None:
        await _check_csrf(request, session)
        request.state.session = session  # the pages show who is signed in, and put the CSRF token in forms
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
