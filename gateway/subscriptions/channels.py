"""Rest-hook delivery of notification Bundles over HTTP, with HMAC signatures and idempotency keys.

Platforms check a notification with :func:`verify` (or its equivalent in their language)::

    expected = "sha256=" + hex(HMAC-SHA256(key=subscription secret, msg=exact request body bytes))
    constant-time compare with the ``X-Gateway-Signature`` header

and deduplicate redeliveries with the ``Idempotency-Key`` header (``<subscription id>:<event number>``
for events): a retry after a lost response carries the same key.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpcore
import httpx

from gateway.config import DEFAULT_DELIVERY_TIMEOUT

logger = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Gateway-Signature"
SIGNATURE_PREFIX: Final = "sha256="
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
FHIR_JSON: Final = "application/fhir+json"
#: Hop-by-hop headers (RFC 9110 §7.6.1, RFC 2616 §13.5.1) and those that decide how the request is framed
#: or routed: a subscriber setting them would send a second, conflicting copy beside the real one.
FORBIDDEN_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Content-Encoding",
        "Host",
        "Expect",
    )
)
#: Headers the gateway sets itself; a ``channel.header`` cannot override them.
_RESERVED_HEADERS: Final = FORBIDDEN_HEADERS | frozenset(
    h.lower() for h in (SIGNATURE_HEADER, IDEMPOTENCY_HEADER, "Content-Type")
)
#: RFC 9110 token characters for a field name.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: Visible ASCII, space and tab: no CR/LF (header injection), no bytes httpx would refuse to encode.
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")
_RETRYABLE_4XX: Final = frozenset({408, 429})


def idempotency_key(*, subscription_id: str, event_number: int | None, notification_type: str, bundle_id: str) -> str:
    """The ``Idempotency-Key`` value: stable per event so redeliveries of one event share it."""
    if event_number is not None:
        return f"{subscription_id}:{event_number}"
    return f"{subscription_id}:{notification_type}:{bundle_id}"


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of the exact body bytes>`` keyed with the subscription secret."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_PREFIX}{digest}"


def verify(body: bytes, secret: str, header_value: str) -> bool:
    """True when ``header_value`` is the signature of ``body``; constant-time to resist timing attacks."""
    expected = sign(body, secret).encode("ascii")
    return hmac.compare_digest(expected, header_value.strip().encode("utf-8", errors="replace"))


def parse_channel_headers(headers: Sequence[str]) -> dict[str, str]:
    """``Subscription.channel.header`` strings (``"Name: value"``) as a dict; malformed ones are dropped.

    Values are never logged: they are typically ``Authorization`` credentials.
    """
    out: dict[str, str] = {}
    for index, raw in enumerate(headers):
        name, sep, value = raw.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.match(name) or not _HEADER_VALUE.match(value):
            logger.warning("ignoring malformed channel header #%d", index)
            continue
        if name.lower() in _RESERVED_HEADERS:
            logger.warning("ignoring channel header #%d: %s is set by the gateway", index, name)
            continue
        out[name] = value
    return out


def channel_header_refusal(headers: Iterable[object]) -> str | None:
    """Why ``channel.header`` cannot be accepted (naming the header, never its value), or ``None``."""
    for index, raw in enumerate(headers):
        if not isinstance(raw, str):
            return f"channel.header[{index}] must be a string"
        name, sep, value = raw.partition(":")
        name = name.strip()
        if not sep or not _HEADER_NAME.match(name):
            return f"channel.header[{index}] must be 'Name: value' with a valid header name"
        if not _HEADER_VALUE.match(value.strip()):
            return f"channel.header[{index}] ({name}) has characters not allowed in a header value"
        if name.lower() in FORBIDDEN_HEADERS:
            return f"channel.header[{index}]: {name} is a hop-by-hop or framing header and cannot be set"
    return None


# -- address pinning ------------------------------------------------------------------------------

#: Host → vetted address for the requests of the current task; set by :meth:`RestHookChannel.send`.
_PINS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "gateway_pinned_addresses", default=None
)


class _PinningBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections to the vetted address of a host, never to a fresh DNS answer.

    The URL keeps its host name, so the Host header, TLS SNI and certificate check are the host's; only
    the socket goes to the address that was checked. A host with no pin is refused outright.
    """

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = (_PINS.get() or {}).get(host.rstrip(".").lower().strip("[]"))
        if address is None:
            raise httpcore.ConnectError(f"no vetted address for {host!r}: refusing to resolve it again")
        return await self._inner.connect_tcp(
            address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for deliveries")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


DELIVERY_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)
#: An answer whose declared length is at most this is read (and thrown away) so that its connection goes
#: back to the pool: closed unread, a connection is closed, and every notification paid a new TCP (and
#: TLS) handshake on both sides: 2,000 connections for 2,000 events in ``bench/delivery.py --backlog``.
DRAIN_BYTES: Final = 16 * 1024
#: Seconds the small answer may take after its status line; past it the connection is closed, as before.
DRAIN_SECONDS: Final = 1.0


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool built on :class:`_PinningBackend`.

    httpx does not take a network backend, so the pool it built is replaced by the same one with ours;
    ``tests/unit/test_pinning.py`` checks on a real socket that connections go where they are pinned.
    """

    def __init__(self, *, limits: httpx.Limits = DELIVERY_LIMITS, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=_PinningBackend(),
        )


def delivery_client(*, ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """The client deliveries use: no redirects followed, connections only to vetted addresses.

    Certificates are checked against the URL's host name (SNI too), whatever address the socket went
    to; ``ssl_context`` replaces the default trust store (certifi), as the tests do with their own CA.
    """
    return httpx.AsyncClient(follow_redirects=False, transport=PinnedTransport(ssl_context=ssl_context))


@dataclass(frozen=True, kw_only=True)
class DeliveryResult:
    """Outcome of one POST; ``error`` holds a status code or exception class name, never a body."""

    ok: bool
    status_code: int | None
    error: str | None
    retryable: bool


class RestHookChannel:
    """POSTs notification Bundles to subscriber endpoints; never raises for HTTP or network failures.

    Redirects are not followed (the endpoint was vetted, its redirect target was not) and response
    bodies are never read: they could echo health data or be arbitrarily large.
    """

    def __init__(self, client: httpx.AsyncClient, *, timeout: float = DEFAULT_DELIVERY_TIMEOUT) -> None:
        self._client = client
        self._deadline = timeout
        self._timeout = httpx.Timeout(timeout)

    async def send(
        self,
        *,
        endpoint: str,
        body: bytes,
        headers: Sequence[str],
        secret: str,
        idempotency_key: str,
        address: str | None = None,
    ) -> DeliveryResult:
        """Deliver ``body``; 2xx is success, 408/429/5xx and network errors are worth retrying.

        ``address`` is the vetted address of the endpoint's host (see ``endpoints.vet_endpoint``): with
        the :func:`delivery_client`, the connection goes there; ``None`` resolves the host as usual, for
        allow-listed names only. The whole request, connection included,
        has one deadline (``timeout``): a peer that answers a byte at a time cannot hold it longer.
        An empty ``secret`` sends no signature header rather than a signature anyone could forge.
        """
        host = _host_for_log(endpoint)
        # No address: an allow-listed host name, resolved as usual (the pin maps it to itself).
        token = _PINS.set({host.rstrip(".").lower(): address or host})
        try:
            async with asyncio.timeout(self._deadline):
                return await self._post(
                    endpoint=endpoint, body=body, headers=headers, secret=secret, idempotency_key=idempotency_key
                )
        except TimeoutError:
            logger.info("delivery %s to %s: no answer within %.1f s (retryable)", idempotency_key, host, self._deadline)
            return DeliveryResult(ok=False, status_code=None, error="deadline exceeded", retryable=True)
        finally:
            _PINS.reset(token)

    async def _post(
        self, *, endpoint: str, body: bytes, headers: Sequence[str], secret: str, idempotency_key: str
    ) -> DeliveryResult:
        request_headers = parse_channel_headers(headers)
        request_headers["Content-Type"] = FHIR_JSON
        request_headers[IDEMPOTENCY_HEADER] = idempotency_key
        if secret:
            request_headers[SIGNATURE_HEADER] = sign(body, secret)
        host = _host_for_log(endpoint)
        try:
            async with self._client.stream(
                "POST",
                endpoint,
                content=body,
                headers=request_headers,
                timeout=self._timeout,
                follow_redirects=False,
            ) as response:
                status = response.status_code
                await _drain(response)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            retryable = _exception_retryable(exc)
            logger.info(
                "delivery %s to %s failed: %s (retryable=%s)",
                idempotency_key,
                host,
                type(exc).__name__,
                retryable,
            )
            return DeliveryResult(ok=False, status_code=None, error=type(exc).__name__, retryable=retryable)
        if 200 <= status < 300:
            logger.debug("delivery %s to %s: HTTP %d", idempotency_key, host, status)
            return DeliveryResult(ok=True, status_code=status, error=None, retryable=False)
        retryable = status in _RETRYABLE_4XX or status >= 500
        logger.info("delivery %s to %s: HTTP %d (retryable=%s)", idempotency_key, host, status, retryable)
        return DeliveryResult(ok=False, status_code=status, error=f"HTTP {status}", retryable=retryable)


async def _drain(response: httpx.Response) -> None:
    """Read a small answer to its end, keeping none of it, so that the connection is kept alive.

    Only a declared ``Content-Length`` of at most :data:`DRAIN_BYTES` is read; a larger or chunked answer
    is left unread and its connection closed, as every answer was before. The status is already known:
    a failure here only costs the connection, never the delivery's outcome.
    """
    length = response.headers.get("content-length", "")
    if not length.isdigit() or int(length) > DRAIN_BYTES:
        return
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _chunk in response.aiter_raw():
                pass
    except (TimeoutError, httpx.HTTPError, httpx.StreamError):
        return


def _exception_retryable(exc: Exception) -> bool:
    """Timeouts and transport failures may heal; a bad URL or a request we cannot encode will not."""
    if isinstance(exc, httpx.TimeoutException):
        return True
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return False
    return isinstance(exc, httpx.TransportError)


def _host_for_log(endpoint: str) -> str:
    """Only the host reaches the logs: paths and query strings may embed tokens."""
    try:
        return urlsplit(endpoint).hostname or "?"
    except ValueError:
        return "?"
