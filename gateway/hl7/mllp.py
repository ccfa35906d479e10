"""MLLP transport: framing, the asyncio server that feeds messages to a handler, and a small client.

Why hand-written: the framing is three bytes, but the failure modes (split reads, garbage between
frames, oversize frames, idle peers, shutdown with a message in flight) decide whether a sender
gets exactly one ACK per message, in order. This module owns those rules and nothing about HL7
content: it never parses or logs message bytes (they carry health data), only sizes and peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from gateway.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MLLP_FRAME_TIMEOUT,
    DEFAULT_MLLP_IDLE_TIMEOUT,
    DEFAULT_MLLP_MAX_CONNECTIONS,
    DEFAULT_MLLP_MAX_CONNECTIONS_PER_PEER,
    DEFAULT_MLLP_PORT,
)

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

#: How much of a rejected frame the application sees: enough for the MSH of any sane message.
OVERSIZE_PREFIX_BYTES = 4096

Handler = Callable[[bytes], Awaitable[bytes]]
OversizeHandler = Callable[[bytes], Awaitable[bytes | None]]

_READ_CHUNK = 65_536
_END_FIRST_BYTE = END_BLOCK[0]
#: After rejecting an oversize frame, how long to swallow the rest of it so that closing does not
#: reset the connection (a reset can destroy the AR ACK before the sender reads it).
_LINGER_SECONDS = 2.0
#: How long a close may wait for unsent bytes to flush before the transport is aborted.
_CLOSE_SECONDS = 5.0
#: How long a frame ending in a lone 0x1C waits for its 0x0D before it is taken as complete anyway.
_LONE_END_GRACE_SECONDS = 0.25


def frame(message: bytes) -> bytes:
    """Wrap one message in the MLLP start and end blocks."""
    return START_BLOCK + message + END_BLOCK


class FrameTooLargeError(Exception):
    """A frame exceeded the size limit; the connection cannot be resynchronised and must close.

    ``prefix`` holds the first bytes of the frame (no start block) so the application can still
    read the MSH and answer AR. ``completed`` holds messages that ended before the oversize frame
    in the same ``feed`` call: they are valid and still deserve their ACKs, in order.
    """

    def __init__(self, prefix: bytes, *, completed: Iterable[bytes] = ()) -> None:
        super().__init__("MLLP frame exceeds the size limit")
        self.prefix = prefix
        self.completed = list(completed)


class FrameDecoder:
    """Incremental MLLP de-framer: bytes in, complete messages out; no I/O, so server and client share it.

    Memory stays bounded: bytes outside a frame are dropped at once (counted in ``discarded_bytes``)
    and a frame is abandoned with :class:`FrameTooLargeError` as soon as it provably exceeds
    ``max_message_bytes``. A start block inside a frame is kept as data (it is not valid in ER7).
    """

    def __init__(self, *, max_message_bytes: int) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        #: Bytes dropped because they were outside any frame (garbage, stray CR/LF), since creation.
        self.discarded_bytes = 0
        self._buffer = bytearray()
        self._in_frame = False
        self._frame_start = 0  # index in _buffer of the first message byte (after the start block)
        self._scan_from = 0  # index in _buffer from which the end block has not been searched yet
        self._swallow_cr = False  # a lone 0x1C ended the last frame: its late 0x0D is not garbage

    @property
    def in_frame(self) -> bool:
        """A start block was seen and its frame is not complete yet."""
        return self._in_frame

    @property
    def lone_end_pending(self) -> bool:
        """The open frame's bytes end with 0x1C: either half an end block or a sender that omits 0x0D."""
        return self._in_frame and bool(self._buffer) and self._buffer[-1] == _END_FIRST_BYTE

    def finish_lone_end(self) -> bytes | None:
        """Take the open frame as complete when it ends with a lone 0x1C and nothing else came.

        Some senders end frames with 0x1C alone; they wait for an ACK that a strict reader never sends.
        The caller decides when "nothing else came" (end of stream, or a short quiet spell).
        """
        if not self.lone_end_pending:
            return None
        end = len(self._buffer) - 1
        message = self._take_message(end, [])
        self._compact(end + 1)
        self._swallow_cr = True
        return message

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the messages they complete (framing bytes removed), in order."""
        if self._swallow_cr and data:
            self._swallow_cr = False
            if data[:1] == END_BLOCK[1:]:
                data = data[1:]
        self._buffer += data
        messages: list[bytes] = []
        pos = 0
        while pos < len(self._buffer) or self._in_frame:
            if not self._in_frame and not self._enter_frame(pos):
                pos = len(self._buffer)
                break
            end = self._buffer.find(END_BLOCK, self._scan_from)
            if end < 0:
                self._check_incomplete(messages)
                break
            messages.append(self._take_message(end, messages))
            pos = end + len(END_BLOCK)
        self._compact(pos)
        return messages

    def _enter_frame(self, pos: int) -> bool:
        """Skip to the next start block from ``pos``; False when there is none (all dropped)."""
        start = self._buffer.find(START_BLOCK, pos)
        if start < 0:
            self.discarded_bytes += len(self._buffer) - pos
            return False
        self.discarded_bytes += start - pos
        self._in_frame = True
        self._frame_start = self._scan_from = start + len(START_BLOCK)
        return True

    def _take_message(self, end: int, completed: list[bytes]) -> bytes:
        if end - self._frame_start > self.max_message_bytes:
            self._fail(completed, end=end)
        message = bytes(self._buffer[self._frame_start : end])
        self._in_frame = False
        return message

    def _check_incomplete(self, completed: list[bytes]) -> None:
        """Fail early on an open frame already over the limit, so a sender cannot make us buffer forever."""
        pending = len(self._buffer) - self._frame_start
        if self._buffer and self._buffer[-1] == _END_FIRST_BYTE:
            pending -= 1  # may be the first half of an end block split across reads
        if pending > self.max_message_bytes:
            self._fail(completed, end=len(self._buffer))
        # The last byte may start an end block, so it is searched again on the next feed.
        self._scan_from = max(self._frame_start, len(self._buffer) - 1)

    def _fail(self, completed: list[bytes], *, end: int) -> None:
        prefix_end = min(end, self._frame_start + OVERSIZE_PREFIX_BYTES)
        prefix = bytes(self._buffer[self._frame_start : prefix_end])
        self.reset()
        raise FrameTooLargeError(prefix, completed=completed)

    def _compact(self, pos: int) -> None:
        """Drop consumed bytes; only the open frame (if any) stays buffered."""
        keep_from = self._frame_start if self._in_frame else pos
        del self._buffer[:keep_from]
        if self._in_frame:
            self._frame_start -= keep_from
            self._scan_from -= keep_from

    def reset(self) -> None:
        """Forget any partial frame (the discard counter is kept)."""
        self._buffer.clear()
        self._in_frame = False
        self._swallow_cr = False
        self._frame_start = self._scan_from = 0


@dataclass(eq=False)
class _Connection:
    """Server-side bookkeeping for one peer; ``busy`` means the application is working for it."""

    peer: str
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    busy: bool = False
    acked: int = 0
    host: str = ""


@dataclass(slots=True)
class Peer:
    """Who is at the other end of the connection being served: its address and, over TLS with client
    certificates, its verified certificate. Handlers read it with :func:`current_peer` (a context variable:
    each connection is its own task), so the handler's signature stays ``bytes -> ACK``."""

    host: str
    certificate: dict[str, object] | None
    #: what the handler concluded about this peer, kept for the connection's next messages
    resolved: object = None


_PEER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("mllp_peer", default=None)


def current_peer() -> Peer | None:
    return _PEER.get()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _peer_host(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


@dataclass(frozen=True, kw_only=True)
class Deadlines:
    """When the peer must have sent something, on the loop's clock; bytes alone never push them back.

    ``idle`` runs from the connection or the last ACK to the next complete message (a slowloris that
    trickles a byte a second is closed all the same); ``frame`` from a start block to its end block.
    """

    idle: float
    frame: float | None = None

    def next(self) -> float:
        return self.idle if self.frame is None else min(self.idle, self.frame)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close gracefully, but never wait forever on a peer that stopped reading."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_SECONDS):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # the peer already reset the connection: it is closed either way


def _lone_end_frame(decoder: FrameDecoder) -> list[bytes]:
    message = decoder.finish_lone_end()
    return [] if message is None else [message]


class MLLPServer:
    """Accepts MLLP connections and answers each message with the handler's ACK, one by one, in order.

    Messages of one connection are handled strictly sequentially (senders rely on the order of
    ACKs); connections are independent tasks. The counters are plain ints, read at scrape time by
    ``gateway.metrics.ServiceCollector`` for ``/metrics``.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MLLP_PORT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float = DEFAULT_MLLP_IDLE_TIMEOUT,
        frame_timeout: float = DEFAULT_MLLP_FRAME_TIMEOUT,
        max_connections: int = DEFAULT_MLLP_MAX_CONNECTIONS,
        max_connections_per_peer: int = DEFAULT_MLLP_MAX_CONNECTIONS_PER_PEER,
        on_oversize: OversizeHandler | None = None,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: a listening socket bound already (``gateway serve --workers``: the parent's, shared by
        every worker); ``host`` and ``port`` are then only what the logs say."""
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._handler = handler
        self._host = host
        self._requested_port = port
        self._max_message_bytes = max_message_bytes
        self._idle_timeout = idle_timeout
        self._frame_timeout = frame_timeout
        self._max_connections = max_connections
        self._max_per_peer = max_connections_per_peer
        self._on_oversize = on_oversize
        self._ssl = ssl_context
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self.connections_total = 0
        self.messages_total = 0
        self.oversize_total = 0
        self.refused_total = 0
        self.timed_out_total = 0

    @property
    def port(self) -> int:
        """The port actually bound (differs from the requested one when that was 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("MLLP server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections_active(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        """Bind and start accepting; port 0 picks a free port (see :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("MLLP server already started")
        self._stopped = asyncio.Event()
        if self._sock is not None:
            self._server = await asyncio.start_server(self._on_connection, sock=self._sock, ssl=self._ssl)
        else:
            self._server = await asyncio.start_server(
                self._on_connection, host=self._host, port=self._requested_port, ssl=self._ssl
            )
        logger.info("MLLP server listening on %s:%d", self._host, self.port)

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`stop`; cancelling this stops the server gracefully."""
        if self._server is None:
            await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight handler calls finish (up to ``grace`` s), close every connection.

        Idle connections close at once. A busy connection gets its ACK written, then closes without
        reading further messages: the sender resends whatever was not acknowledged.
        """
        if self._server is None or self._stopped is None:
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._server.close()
        logger.info("MLLP server stopping: %d open connections", len(self._connections))
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        await self._wait_for_connections(grace)
        await self._server.wait_closed()
        self._stopped.set()
        logger.info("MLLP server stopped")

    async def _wait_for_connections(self, grace: float) -> None:
        tasks = {conn.task for conn in self._connections if conn.task is not None}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if not pending:
            return
        logger.warning("MLLP shutdown grace of %.1f s over: aborting %d busy connections", grace, len(pending))
        for conn in list(self._connections):
            conn.writer.transport.abort()
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=_CLOSE_SECONDS)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Connection boundary: whatever goes wrong here closes this connection and nothing else."""
        if self._stopping:
            await _close_writer(writer)
            return
        host = _peer_host(writer)
        refusal = self._over_limit(host)
        if refusal:
            self.refused_total += 1
            logger.warning("MLLP connection from %s refused: %s", _peer_name(writer), refusal)
            await _close_writer(writer)
            return
        conn = _Connection(peer=_peer_name(writer), writer=writer, task=asyncio.current_task(), host=host)
        _PEER.set(Peer(host, writer.get_extra_info("peercert")))
        self._connections.add(conn)
        self.connections_total += 1
        logger.info("MLLP connection from %s opened", conn.peer)
        try:
            await self._serve(conn, reader)
        except ConnectionError as exc:
            logger.info("MLLP connection from %s lost: %s", conn.peer, type(exc).__name__)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cancelled by stop(): ending normally is the expected outcome of this task.
            logger.info("MLLP connection from %s closed by shutdown", conn.peer)
        except Exception:
            logger.exception("MLLP connection from %s failed after %d ACKs; closing it", conn.peer, conn.acked)
        finally:
            self._connections.discard(conn)
            await _close_writer(writer)
            logger.info("MLLP connection from %s closed after %d ACKs", conn.peer, conn.acked)

    def _over_limit(self, host: str) -> str | None:
        """Why a new connection from ``host`` is refused (global or per-peer cap), or ``None``."""
        if len(self._connections) >= self._max_connections:
            return f"{self._max_connections} connections already open"
        if sum(1 for c in self._connections if c.host == host) >= self._max_per_peer:
            return f"{self._max_per_peer} connections already open from this address"
        return None

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(max_message_bytes=self._max_message_bytes)
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(idle=loop.time() + self._idle_timeout)
        while not self._stopping:
            data = await self._read(conn, reader, decoder, deadlines)
            if data is None:
                return
            discarded_before = decoder.discarded_bytes
            try:
                messages = decoder.feed(data) if data else _lone_end_frame(decoder)
            except FrameTooLargeError as exc:
                if await self._handle(conn, exc.completed):
                    await self._reject_oversize(conn, reader, exc.prefix)
                return
            finally:
                self._warn_discarded(conn, decoder.discarded_bytes - discarded_before)
            if not await self._handle(conn, messages):
                return
            deadlines = self._next_deadlines(deadlines, decoder, got_messages=bool(messages), now=loop.time())

    def _next_deadlines(
        self, current: Deadlines, decoder: FrameDecoder, *, got_messages: bool, now: float
    ) -> Deadlines:
        idle = now + self._idle_timeout if got_messages else current.idle
        if not decoder.in_frame:
            return Deadlines(idle=idle)
        frame_deadline = current.frame if current.frame is not None and not got_messages else now + self._frame_timeout
        return Deadlines(idle=idle, frame=frame_deadline)

    async def _read(
        self, conn: _Connection, reader: asyncio.StreamReader, decoder: FrameDecoder, deadlines: Deadlines
    ) -> bytes | None:
        """Next bytes from the peer; ``b""`` when a lone 0x1C frame end stood alone long enough; ``None`` to close.

        ``None`` at end of stream (after taking a frame that ended in a lone 0x1C) and when a deadline passed.
        """
        lone_end = decoder.lone_end_pending
        when = deadlines.next()
        if lone_end:
            when = min(when, asyncio.get_running_loop().time() + _LONE_END_GRACE_SECONDS)
        try:
            async with asyncio.timeout_at(when):
                data = await reader.read(_READ_CHUNK)
        except TimeoutError:
            if lone_end and decoder.lone_end_pending:
                return b""
            self.timed_out_total += 1
            what = "a frame" if deadlines.frame is not None and deadlines.frame <= deadlines.idle else "a message"
            logger.info("MLLP connection from %s sent no complete %s in time; closing it", conn.peer, what)
            return None
        if not data:
            if decoder.lone_end_pending:
                return b""  # handled as a frame; the next read sees the end of stream again
            return None
        return data

    async def _handle(self, conn: _Connection, messages: list[bytes]) -> bool:
        """Run the handler on each message and write its ACK before the next; False once stopping."""
        for message in messages:
            if self._stopping:
                return False
            self.messages_total += 1
            conn.busy = True
            try:
                ack = await self._handler(message)
                await self._write(conn, ack)
            finally:
                conn.busy = False
            conn.acked += 1
            logger.debug("MLLP %d-byte message from %s acked (%d-byte ACK)", len(message), conn.peer, len(ack))
        return not self._stopping

    async def _write(self, conn: _Connection, payload: bytes) -> None:
        conn.writer.write(frame(payload))
        await conn.writer.drain()

    async def _reject_oversize(self, conn: _Connection, reader: asyncio.StreamReader, prefix: bytes) -> None:
        """Let the application answer (AR) from the frame's first bytes, then close the connection."""
        self.oversize_total += 1
        logger.warning(
            "MLLP frame from %s exceeds %d bytes; rejecting it and closing the connection",
            conn.peer,
            self._max_message_bytes,
        )
        if self._on_oversize is not None:
            conn.busy = True
            try:
                reply = await self._on_oversize(prefix)
                if reply is not None:
                    await self._write(conn, reply)
            finally:
                conn.busy = False
        await self._linger(conn, reader)

    async def _linger(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Half-close and discard what the peer still sends, briefly, so the final close is not a reset."""
        if conn.writer.can_write_eof():
            conn.writer.write_eof()
        discarded = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER_SECONDS):
                while chunk := await reader.read(_READ_CHUNK):
                    discarded += len(chunk)
        if discarded:
            logger.info("MLLP discarded %d further bytes of the oversize frame from %s", discarded, conn.peer)

    def _warn_discarded(self, conn: _Connection, count: int) -> None:
        if count:
            logger.warning("MLLP discarded %d bytes outside any frame from %s", count, conn.peer)


class MLLPClient:
    """Keeps one MLLP connection open and pairs each sent message with the next ACK frame.

    Sends are serialised (a lock), so concurrent callers cannot swap ACKs. After a timeout or a lost
    connection the client disconnects, so a late ACK is never paired with a later message; the next
    :meth:`send` reconnects.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        max_message_bytes: int = 16 * 1_048_576,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ssl = ssl_context
        self._max_message_bytes = max_message_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(max_message_bytes=max_message_bytes)
        self._pending: deque[bytes] = deque()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (no-op when already open)."""
        if self._writer is not None:
            return
        async with asyncio.timeout(self.timeout):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl)
        self._decoder = FrameDecoder(max_message_bytes=self._max_message_bytes)
        self._pending.clear()

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            await _close_writer(writer)

    async def send(self, message: bytes) -> bytes:
        """Frame and send one message, wait for the next ACK frame and return it unframed.

        Raises ``TimeoutError`` after ``timeout`` seconds and ``ConnectionError`` when the peer closes
        before answering; either way the connection is closed.
        """
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(message)
            except (TimeoutError, ConnectionError, FrameTooLargeError):
                await self.close()
                raise

    async def _exchange(self, message: bytes) -> bytes:
        await self.connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(frame(message))
        await self._writer.drain()
        while not self._pending:
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                raise ConnectionError("MLLP peer closed the connection before sending an ACK")
            self._pending.extend(self._decoder.feed(data))
        return self._pending.popleft()


async def send_messages(
    host: str,
    port: int,
    messages: Iterable[bytes],
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - per message, not for the whole batch
) -> list[bytes]:
    """Send messages one by one on a single connection and return their ACKs in the same order.

    ``timeout`` bounds each exchange, so a long batch is not cut short by a global deadline.
    """
    async with MLLPClient(host, port, timeout=timeout) as client:
        return [await client.send(message) for message in messages]
