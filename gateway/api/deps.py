"""Request dependencies: the runtime, and the optional bearer token guarding FHIR and admin routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from gateway.errors import FhirError
from gateway.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_token(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """With GATEWAY_API_TOKEN set, FHIR and admin calls need ``Authorization: Bearer <token>``."""
    expected = runtime.settings.api_token
    if not expected:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise FhirError("missing or invalid bearer token", status=401, issue_code="login")
