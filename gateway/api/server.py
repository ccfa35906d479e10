"""The HTTP server's own limits: request head size and time, keep-alive, concurrent connections.

uvicorn bounds the head's size (h11's incomplete-event limit) but not the time a client may take to
send it: a peer that trickles one header byte a second holds a connection forever. The protocol below
is uvicorn's h11 protocol with one timer more: from the connection (or the end of the previous response)
to the end of the request head. When it fires, the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.config import Settings

_TOO_LARGE_TEXT = b"request head larger than allowed\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE_TEXT), _TOO_LARGE_TEXT)
)


class HeaderDeadlineProtocol(H11Protocol):
    """h11 protocol closing connections whose request head is not complete in ``header_timeout`` s.

    It also counts the head's bytes itself: h11's limit only applies to a head still incomplete, so a
    large head that arrives whole in one read would pass. Over ``max_head_bytes`` the answer is 431.
    """

    header_timeout: ClassVar[float] = 10.0
    max_head_bytes: ClassVar[int] = 65_536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_tail = b""

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self.logger.info("HTTP request head over %d bytes; refusing it", self.max_head_bytes)
            self._disarm()
            self.transport.write(_TOO_LARGE)
            self.transport.close()
            return
        super().data_received(data)

    def _head_too_large(self, data: bytes) -> bool:
        window = self._head_tail + data
        end = window.find(b"\r\n\r\n")
        self._head_bytes += len(data) if end < 0 else end + 4 - len(self._head_tail)
        self._head_tail = window[-3:]
        return self._head_bytes > self.max_head_bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # the head is in: the body and the application have their own limits

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes, self._head_tail = 0, b""
        self._head_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info(
                "HTTP request head not received within %.1f s; closing the connection", self.header_timeout
            )
            self.transport.close()


def protocol_for(settings: Settings) -> type[HeaderDeadlineProtocol]:
    limits = {"header_timeout": settings.http_header_timeout, "max_head_bytes": settings.http_max_header_bytes}
    return type("GatewayHTTPProtocol", (HeaderDeadlineProtocol,), limits)


def uvicorn_config(app: Any, settings: Settings, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for ``gateway serve``: the gateway's limits on top of the caller's options."""
    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        http=protocol_for(settings),
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        timeout_keep_alive=max(1, round(settings.http_keepalive_timeout)),
        limit_concurrency=settings.http_max_connections,
        **kwargs,
    )
