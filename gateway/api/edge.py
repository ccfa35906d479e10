"""The HTTP edge, around every route: request id, access log, ``HEAD``, and the public base behind proxies.

- ``X-Request-ID``: taken from the client when it is a short token, else made up; echoed in the answer and
  bound to every log record of the request.
- One access-log line per request (logger ``gateway.access``): method, path, status, duration. The query
  string is never logged: search parameters can carry patient identifiers.
- ``HEAD`` runs the ``GET`` route and drops the body (FastAPI routes declare ``GET`` only).
- ``Forwarded`` / ``X-Forwarded-Proto|Host|Port|Prefix`` from a trusted proxy (``TRUSTED_PROXIES``) set the
  public FHIR base used in this request's links; from anyone else they are ignored.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs
from gateway.config import REQUEST_BASE, WILDCARD_HOSTS, Settings
from gateway.metrics import HTTP_REQUESTS

access_log = logging.getLogger("gateway.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: An RFC 7239 node (address, ``[v6]:port``, ``unknown``, an obfuscated ``_name``): nothing else is logged.
NODE = re.compile(r"^[A-Za-z0-9.:\[\]_-]{1,64}$")
HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def _forwarded_pairs(value: str) -> dict[str, str]:
    """The first element of an RFC 7239 ``Forwarded`` header (the proxy nearest the client)."""
    first = value.split(",", maxsplit=1)[0]
    pairs = {}
    for part in first.split(";"):
        name, _, raw = part.strip().partition("=")
        if name:
            pairs[name.strip().lower()] = raw.strip().strip('"')
    return pairs


def forwarded_base(headers: Headers, *, fallback_scheme: str) -> str | None:
    """The public FHIR base a proxy tells, or None when it tells nothing usable (or a wildcard host)."""
    pairs = _forwarded_pairs(headers["forwarded"]) if "forwarded" in headers else {}
    scheme = (pairs.get("proto") or headers.get("x-forwarded-proto", "").split(",")[0].strip()).lower()
    host = pairs.get("host") or headers.get("x-forwarded-host", "").split(",")[0].strip()
    port = headers.get("x-forwarded-port", "").split(",")[0].strip()
    prefix = headers.get("x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
    if not host or not HOST.match(host) or host.rsplit(":", 1)[0].strip("[]") in WILDCARD_HOSTS:
        return None
    scheme = scheme if scheme in ("http", "https") else fallback_scheme
    if port.isdigit() and ":" not in host.removeprefix("[").split("]")[-1]:
        default = {"http": "80", "https": "443"}[scheme]
        host = host if port == default else f"{host}:{port}"
    if prefix and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix):
        prefix = ""
    return f"{scheme}://{host}{prefix}/fhir"


def _host_base(headers: Headers, scheme: str) -> str | None:
    """When bound to a wildcard address, the client's own ``Host`` is the best name for us it knows."""
    host = headers.get("host", "")
    if not host or not HOST.match(host) or host.rsplit(":", 1)[0].strip("[]") in WILDCARD_HOSTS:
        return None
    return f"{scheme}://{host}/fhir"


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _base(self, scope: Scope, headers: Headers) -> str | None:
        if self.settings.base_url:
            return None
        client = scope.get("client") or ("", 0)
        scheme = str(scope.get("scheme", "http"))
        if self.settings.trusted_proxies and self.settings.is_trusted_proxy(str(client[0])):
            found = forwarded_base(headers, fallback_scheme=scheme)
            if found:
                return found
        if self.settings.http_host in WILDCARD_HOSTS:
            return _host_base(headers, scheme)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        head = scope["method"] == "HEAD"
        if head:
            scope["method"] = "GET"  # in place: the router's ``route`` must reach this scope for the metrics
        started = time.perf_counter()
        status = {"code": 500}
        token = REQUEST_BASE.set(self._base(scope, headers))

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                out = MutableHeaders(scope=message)
                out["X-Request-ID"] = request_id
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        try:
            with logs.bound(request_id=request_id):
                try:
                    await self.app(scope, receive, wrapped)
                finally:
                    client = self._client(scope, headers)
                    self._log(scope, status["code"], time.perf_counter() - started, head=head, client=client)
        finally:
            REQUEST_BASE.reset(token)

    def _client(self, scope: Scope, headers: Headers) -> str:
        """The client's address; behind a trusted proxy, the one it forwards for (else the proxy's own)."""
        peer = str((scope.get("client") or ("-", 0))[0])
        if not (self.settings.trusted_proxies and self.settings.is_trusted_proxy(peer)):
            return peer
        forwarded = _forwarded_pairs(headers["forwarded"]).get("for") if "forwarded" in headers else None
        forwarded = forwarded or headers.get("x-forwarded-for", "").split(",")[0].strip()
        return forwarded if forwarded and NODE.match(forwarded) else peer

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, *, head: bool, client: str) -> None:
        method = "HEAD" if head else str(scope["method"])
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        HTTP_REQUESTS.labels(method=method, route=template, status=str(status)).observe(seconds)
        access_log.info(
            "%s %s %d %.1f ms",
            method,
            scope["path"],
            status,
            seconds * 1000,
            extra={
                "http_method": method,
                "http_path": scope["path"],
                "http_status": status,
                "duration_ms": round(seconds * 1000, 1),
                "client": client,
            },
        )
