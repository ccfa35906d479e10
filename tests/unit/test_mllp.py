"""MLLP framing, server and client over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

from gateway.hl7.mllp import (
    END_BLOCK,
    OVERSIZE_PREFIX_BYTES,
    START_BLOCK,
    FrameDecoder,
    FrameTooLargeError,
    MLLPClient,
    MLLPServer,
    frame,
    send_messages,
)

MSG = (
    b"MSH|^~\\&|GAM|CH-TEST|GW|GW|20260101120000||ADT^A01^ADT_A01|MSG1|P|2.5\r"
    b"EVN||20260101120000\r"
    b"PID|1||123^^^CH-TEST^PI||SECRETNAME^JEANNE\r"
)
GUARD = 5.0  # upper bound for any single wait, so a bug fails the test instead of hanging it


def msg(n: int) -> bytes:
    return MSG.replace(b"MSG1", b"MSG%d" % n)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=4 * GUARD))


async def echo_ack(message: bytes) -> bytes:
    return b"ACK:" + message


@asynccontextmanager
async def serving(
    handler: Callable[[bytes], Awaitable[bytes]] = echo_ack, *, grace: float = 1.0, **kwargs: Any
) -> AsyncIterator[MLLPServer]:
    server = MLLPServer(handler, port=0, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=grace)


@asynccontextmanager
async def connection(server: MLLPServer) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def read_acks(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    decoder = FrameDecoder(max_message_bytes=1_048_576)
    acks: list[bytes] = []
    async with asyncio.timeout(GUARD):
        while len(acks) < count:
            data = await reader.read(4096)
            assert data, f"connection closed after {len(acks)} of {count} ACKs"
            acks.extend(decoder.feed(data))
    return acks


async def read_until_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(GUARD):
        return await reader.read()


@pytest.fixture(autouse=True)
def no_asyncio_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Unretrieved task exceptions and callback errors are logged by asyncio, not raised: fail on them."""
    yield
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# --------------------------------------------------------------------------- FrameDecoder


def test_frame_wraps_in_start_and_end_blocks() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\x0d"
    assert frame(b"abc") == START_BLOCK + b"abc" + END_BLOCK


def test_decoder_one_frame() -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    assert decoder.feed(frame(MSG)) == [MSG]
    assert decoder.discarded_bytes == 0


def test_decoder_several_frames_in_one_feed() -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    assert decoder.feed(frame(msg(1)) + frame(msg(2)) + frame(msg(3))) == [msg(1), msg(2), msg(3)]


def test_decoder_frame_split_byte_by_byte() -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    data = frame(msg(1)) + frame(msg(2))
    out: list[bytes] = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    assert out == [msg(1), msg(2)]


def test_decoder_end_block_split_across_feeds() -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    assert decoder.feed(START_BLOCK + MSG + b"\x1c") == []
    assert decoder.feed(b"\x0d") == [MSG]


def test_decoder_lone_end_byte_inside_message_is_data() -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    assert decoder.feed(START_BLOCK + b"a\x1cb") == []
    assert decoder.feed(b"c" + END_BLOCK) == [b"a\x1cbc"]


def test_decoder_discards_garbage_before_start_block() -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    assert decoder.feed(b"junk\r\n" + frame(msg(1)) + b"\r\n") == [msg(1)]
    assert decoder.feed(b"\n\n" + frame(msg(2))) == [msg(2)]
    assert decoder.discarded_bytes == 6 + 2 + 2


def test_decoder_garbage_only_is_not_buffered() -> None:
    decoder = FrameDecoder(max_message_bytes=10)
    for _ in range(100):
        assert decoder.feed(b"x" * 1000) == []
    assert decoder.discarded_bytes == 100_000
    assert decoder.feed(frame(b"ok")) == [b"ok"]


def test_decoder_accepts_exactly_the_limit() -> None:
    decoder = FrameDecoder(max_message_bytes=len(MSG))
    assert decoder.feed(START_BLOCK + MSG + b"\x1c") == []  # trailing 0x1C may open the end block
    assert decoder.feed(b"\x0d") == [MSG]


def test_decoder_oversize_complete_frame_raises_with_prefix() -> None:
    big = b"MSH|" + b"x" * 10_000
    decoder = FrameDecoder(max_message_bytes=5000)
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(frame(big))
    assert info.value.prefix == big[:OVERSIZE_PREFIX_BYTES]
    assert info.value.completed == []


def test_decoder_oversize_prefix_of_short_frame_stops_at_end_block() -> None:
    decoder = FrameDecoder(max_message_bytes=10)
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(frame(b"x" * 20) + frame(b"next"))
    assert info.value.prefix == b"x" * 20


def test_decoder_oversize_incomplete_frame_raises_before_end_block() -> None:
    decoder = FrameDecoder(max_message_bytes=100)
    assert decoder.feed(START_BLOCK + b"MSH|" + b"x" * 96) == []  # exactly 100 bytes, still open
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(b"y")
    assert info.value.prefix == b"MSH|" + b"x" * 96 + b"y"


def test_decoder_oversize_keeps_messages_completed_before_it() -> None:
    decoder = FrameDecoder(max_message_bytes=len(MSG))
    with pytest.raises(FrameTooLargeError) as info:
        decoder.feed(frame(msg(1)) + START_BLOCK + MSG * 2)
    assert info.value.completed == [msg(1)]
    assert info.value.prefix == (MSG * 2)[:OVERSIZE_PREFIX_BYTES]


def test_decoder_reusable_after_frame_and_after_oversize() -> None:
    decoder = FrameDecoder(max_message_bytes=len(MSG))
    assert decoder.feed(frame(msg(1))) == [msg(1)]
    assert decoder.feed(frame(msg(2))) == [msg(2)]
    with pytest.raises(FrameTooLargeError):
        decoder.feed(frame(MSG + b"extra"))
    assert decoder.feed(frame(msg(3))) == [msg(3)]


def test_decoder_rejects_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrameDecoder(max_message_bytes=0)


# --------------------------------------------------------------------------- server


def test_acks_come_back_in_order_on_one_connection() -> None:
    rng = random.Random(7)
    messages = [msg(n) for n in range(20)]

    async def slow_random_handler(message: bytes) -> bytes:
        await asyncio.sleep(rng.uniform(0, 0.01))
        return b"ACK:" + message

    async def scenario() -> None:
        async with serving(slow_random_handler) as server, connection(server) as (reader, writer):
            for message in messages:  # pipelined: no waiting for ACKs between messages
                writer.write(frame(message))
            await writer.drain()
            assert await read_acks(reader, len(messages)) == [b"ACK:" + m for m in messages]
            assert server.messages_total == 20
            assert server.connections_total == 1

    run(scenario())


def test_connections_are_served_concurrently() -> None:
    b_handled = asyncio.Event()

    async def handler(message: bytes) -> bytes:
        if message == b"A":  # A can only finish once B (another connection) has been handled
            async with asyncio.timeout(GUARD):
                await b_handled.wait()
        else:
            b_handled.set()
        return b"ACK:" + message

    async def scenario() -> None:
        async with serving(handler) as server, connection(server) as (ra, wa), connection(server) as (rb, wb):
            wa.write(frame(b"A"))
            await wa.drain()
            wb.write(frame(b"B"))
            await wb.drain()
            assert await read_acks(rb, 1) == [b"ACK:B"]
            assert await read_acks(ra, 1) == [b"ACK:A"]

    run(scenario())


def test_two_messages_in_one_write() -> None:
    async def scenario() -> None:
        async with serving() as server, connection(server) as (reader, writer):
            writer.write(frame(msg(1)) + frame(msg(2)))
            await writer.drain()
            assert await read_acks(reader, 2) == [b"ACK:" + msg(1), b"ACK:" + msg(2)]

    run(scenario())


def test_one_message_split_across_writes() -> None:
    async def scenario() -> None:
        data = frame(MSG)
        async with serving() as server, connection(server) as (reader, writer):
            for cut in range(0, len(data), 17):
                writer.write(data[cut : cut + 17])
                await writer.drain()
                await asyncio.sleep(0.005)  # let the server see each piece as its own read
            assert await read_acks(reader, 1) == [b"ACK:" + MSG]

    run(scenario())


def test_garbage_between_frames_is_dropped_and_logged_by_size(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.hl7.mllp")

    async def scenario() -> None:
        async with serving() as server, connection(server) as (reader, writer):
            writer.write(b"\r\n" + frame(msg(1)) + b"\n" + frame(msg(2)))
            await writer.drain()
            assert await read_acks(reader, 2) == [b"ACK:" + msg(1), b"ACK:" + msg(2)]

    run(scenario())
    assert "discarded 3 bytes outside any frame" in caplog.text
    assert b"SECRETNAME".decode() not in caplog.text


@pytest.mark.parametrize("complete", [True, False], ids=["complete-frame", "open-frame"])
def test_oversize_frame_gets_reply_then_connection_closes(complete: bool) -> None:
    prefixes: list[bytes] = []

    async def on_oversize(prefix: bytes) -> bytes:
        prefixes.append(prefix)
        return b"AR:" + prefix[:4]

    big = b"MSH|" + b"x" * 3000
    payload = frame(big) if complete else START_BLOCK + big

    async def scenario() -> None:
        async with serving(max_message_bytes=1000, on_oversize=on_oversize) as server:
            async with connection(server) as (reader, writer):
                writer.write(frame(msg(1)) + payload)
                await writer.drain()
                assert await read_acks(reader, 2) == [b"ACK:" + msg(1), b"AR:MSH|"]
                assert await read_until_eof(reader) == b""
            assert server.oversize_total == 1
            assert server.messages_total == 1

    run(scenario())
    assert len(prefixes) == 1
    assert big.startswith(prefixes[0])
    assert len(prefixes[0]) >= 1000


def test_oversize_without_callback_just_closes() -> None:
    async def scenario() -> None:
        async with serving(max_message_bytes=100) as server, connection(server) as (reader, writer):
            writer.write(frame(b"x" * 200))
            await writer.drain()
            assert await read_until_eof(reader) == b""
            assert server.oversize_total == 1

    run(scenario())


def test_oversize_callback_returning_none_sends_nothing() -> None:
    async def on_oversize(prefix: bytes) -> None:
        return None

    async def scenario() -> None:
        async with (
            serving(max_message_bytes=100, on_oversize=on_oversize) as server,
            connection(server) as (reader, writer),
        ):
            writer.write(frame(b"x" * 200))
            await writer.drain()
            assert await read_until_eof(reader) == b""

    run(scenario())


def test_idle_connection_is_closed() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout=0.2) as server, connection(server) as (reader, writer):
            writer.write(frame(msg(1)))
            await writer.drain()
            assert await read_acks(reader, 1) == [b"ACK:" + msg(1)]
            assert await read_until_eof(reader) == b""
            assert server.connections_active == 0

    run(scenario())


def test_handler_failure_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(message: bytes) -> bytes:
        if b"BOOM" in message:
            raise RuntimeError("handler bug")
        return b"ACK:" + message

    async def scenario() -> None:
        async with serving(handler) as server:
            async with connection(server) as (other_reader, other_writer):
                async with connection(server) as (reader, writer):
                    writer.write(frame(MSG + b"BOOM") + frame(msg(2)))
                    await writer.drain()
                    assert await read_until_eof(reader) == b""  # no ACK for either message
                other_writer.write(frame(msg(3)))
                await other_writer.drain()
                assert await read_acks(other_reader, 1) == [b"ACK:" + msg(3)]
            async with connection(server) as (reader, writer):
                writer.write(frame(msg(4)))
                await writer.drain()
                assert await read_acks(reader, 1) == [b"ACK:" + msg(4)]

    run(scenario())
    failures = [r for r in caplog.records if r.exc_info and r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "RuntimeError" in caplog.text
    assert "SECRETNAME" not in caplog.text


def test_stop_lets_in_flight_handler_finish_and_closes_connections() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(message: bytes) -> bytes:
        if message == b"SLOW":
            started.set()
            await release.wait()
        return b"ACK:" + message

    async def scenario() -> None:
        server = MLLPServer(handler, port=0)
        await server.start()
        port = server.port
        async with connection(server) as (idle_reader, _), connection(server) as (reader, writer):
            writer.write(frame(b"SLOW") + frame(b"NEXT"))
            await writer.drain()
            async with asyncio.timeout(GUARD):
                await started.wait()
            stopping = asyncio.create_task(server.stop(grace=GUARD))
            assert await read_until_eof(idle_reader) == b""  # idle peer closed at once
            release.set()
            await stopping
            # The in-flight message got its ACK; the queued one was not handled (the sender resends).
            assert await read_until_eof(reader) == frame(b"ACK:SLOW")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run(scenario())


def test_stop_grace_bounds_a_stuck_handler() -> None:
    started = asyncio.Event()

    async def stuck(message: bytes) -> bytes:
        started.set()
        await asyncio.Event().wait()
        return b""

    async def scenario() -> None:
        server = MLLPServer(stuck, port=0)
        await server.start()
        async with connection(server) as (reader, writer):
            writer.write(frame(MSG))
            await writer.drain()
            async with asyncio.timeout(GUARD):
                await started.wait()
                await server.stop(grace=0.1)
            assert await read_until_eof(reader) == b""
        assert server.connections_active == 0

    run(scenario())


def test_serve_forever_returns_after_stop() -> None:
    async def scenario() -> None:
        server = MLLPServer(echo_ack, port=0)
        serving_task = asyncio.create_task(server.serve_forever())
        async with asyncio.timeout(GUARD):
            while True:
                try:
                    port = server.port
                    break
                except RuntimeError:
                    await asyncio.sleep(0)
        assert await send_messages("127.0.0.1", port, [msg(1)]) == [b"ACK:" + msg(1)]
        await server.stop()
        async with asyncio.timeout(GUARD):
            await serving_task
        await server.stop()  # idempotent

    run(scenario())


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = MLLPServer(echo_ack, port=0).port


# --------------------------------------------------------------------------- client


def test_client_keeps_one_connection_for_several_sends() -> None:
    async def scenario() -> None:
        async with serving() as server:
            async with MLLPClient("127.0.0.1", server.port, timeout=GUARD) as client:
                acks = [await client.send(msg(n)) for n in range(3)]
            assert acks == [b"ACK:" + msg(n) for n in range(3)]
            assert server.connections_total == 1

    run(scenario())


def test_send_messages_returns_acks_in_order() -> None:
    async def scenario() -> None:
        async with serving() as server:
            acks = await send_messages("127.0.0.1", server.port, (msg(n) for n in range(5)), timeout=GUARD)
            assert acks == [b"ACK:" + msg(n) for n in range(5)]

    run(scenario())


def test_client_times_out_and_disconnects() -> None:
    async def never(message: bytes) -> bytes:
        await asyncio.Event().wait()
        return b""

    async def scenario() -> None:
        async with (
            serving(never, grace=0.05) as server,
            MLLPClient("127.0.0.1", server.port, timeout=0.2) as client,
        ):
            with pytest.raises(TimeoutError):
                await client.send(MSG)
            assert client._writer is None

    run(scenario())


def test_client_raises_when_peer_closes_without_ack() -> None:
    async def boom(message: bytes) -> bytes:
        raise RuntimeError("no ACK")

    async def scenario() -> None:
        async with serving(boom) as server, MLLPClient("127.0.0.1", server.port, timeout=GUARD) as client:
            with pytest.raises(ConnectionError):
                await client.send(MSG)

    run(scenario())
