"""OAuth 2.0 client credentials (``POST /oauth/token``) and SMART discovery (``/.well-known/smart-configuration``).

Errors follow RFC 6749 section 5.2: a JSON body ``{"error", "error_description"}``, 400, or 401 with
``WWW-Authenticate`` for ``invalid_client``; responses are never cached.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import RuntimeDep
from gateway.api.errors import http_status
from gateway.auth.scopes import CONFIDENTIAL, POPULATION
from gateway.auth.tokens import ASSERTION_ALGORITHMS, authenticate_client, granted_scopes
from gateway.errors import InvalidClientError, OAuthError
from gateway.runtime import Runtime

router = APIRouter(tags=["auth"])
FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM_BYTES = 64 * 1024


def _json(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers={**NO_STORE, **(headers or {})}
    )


def oauth_error_response(exc: OAuthError, *, basic: bool) -> Response:
    headers = {}
    status = http_status(exc)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="gateway"' if basic else 'Bearer realm="gateway"'
    return _json({"error": exc.error, "error_description": exc.message}, status=status, headers=headers)


def _token(runtime: Runtime, form: dict[str, str], *, authorization: str, request_url: str) -> dict[str, Any]:
    if form.get("grant_type") != "client_credentials":
        raise OAuthError("unsupported_grant_type", "grant_type must be client_credentials")
    now = datetime.now(UTC)
    urls = list(dict.fromkeys([runtime.settings.token_url(), request_url]))
    client = authenticate_client(runtime.db, form, authorization=authorization, token_urls=urls, now=now)
    scopes = granted_scopes(client, form.get("scope"))
    issued = runtime.tokens.issue(client, scopes, now=now)
    return {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }


@router.post(
    "/oauth/token",
    summary="OAuth 2.0 client credentials: a short-lived bearer token (secret or private_key_jwt)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                FORM: {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "scope": {"type": "string"},
                            "client_id": {"type": "string"},
                            "client_secret": {"type": "string"},
                            "client_assertion_type": {"type": "string"},
                            "client_assertion": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request, runtime: RuntimeDep) -> Response:
    authorization = request.headers.get("authorization", "")
    basic = authorization[:6].lower() == "basic "
    try:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != FORM:
            raise OAuthError("invalid_request", f"the body must be {FORM}")
        raw = await request.body()
        if len(raw) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "request too large")
        try:
            form = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except (UnicodeDecodeError, ValueError) as exc:
            raise OAuthError("invalid_request", "the form is not UTF-8 URL-encoded") from exc
        if not authorization.isascii():
            raise InvalidClientError("the Authorization header must be ASCII")
        body = await run_in_threadpool(_token, runtime, form, authorization=authorization, request_url=str(request.url))
    except OAuthError as exc:
        return oauth_error_response(exc, basic=basic)
    return _json(body)


@router.get("/.well-known/smart-configuration", summary="SMART discovery: the token endpoint and what it accepts")
async def smart_configuration(runtime: RuntimeDep) -> Response:
    return _json(smart_document(runtime))


def smart_document(runtime: Runtime) -> dict[str, Any]:
    return {
        "issuer": runtime.settings.public_origin(),
        "token_endpoint": runtime.settings.token_url(),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": [
            "system/*.cruds",
            "system/Patient.rs",
            "system/Subscription.cruds",
            POPULATION,
            CONFIDENTIAL,
        ],
        "capabilities": ["client-confidential-asymmetric", "client-confidential-symmetric", "permission-v2"],
    }
