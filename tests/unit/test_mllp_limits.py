"""Issue 12 items 8 and 9 on real sockets: connection caps, deadlines bytes cannot push back, lone 0x1C ends."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from gateway.hl7.mllp import END_BLOCK, START_BLOCK, FrameDecoder, frame
from tests.unit.test_mllp import GUARD, connection, msg, read_acks, read_until_eof, run, serving


def test_decoder_takes_a_lone_end_byte_as_frame_end_when_asked_and_swallows_a_late_cr() -> None:
    decoder = FrameDecoder(max_message_bytes=1000)
    assert decoder.feed(START_BLOCK + msg(1) + b"\x1c") == []
    assert decoder.lone_end_pending
    assert decoder.finish_lone_end() == msg(1)
    assert decoder.finish_lone_end() is None
    assert decoder.feed(b"\x0d" + frame(msg(2))) == [msg(2)]
    assert decoder.discarded_bytes == 0


def test_item9_frame_ending_in_lone_0x1c_is_answered() -> None:
    async def scenario() -> None:
        async with serving() as server, connection(server) as (reader, writer):
            writer.write(START_BLOCK + msg(1) + b"\x1c")
            await writer.drain()
            assert await read_acks(reader, 1) == [b"ACK:" + msg(1)]
            writer.write(frame(msg(2)))  # the connection goes on normally
            await writer.drain()
            assert await read_acks(reader, 1) == [b"ACK:" + msg(2)]

    run(scenario())


def test_item9_lone_0x1c_then_end_of_stream_is_answered() -> None:
    async def scenario() -> None:
        async with serving() as server, connection(server) as (reader, writer):
            writer.write(START_BLOCK + msg(1) + b"\x1c")
            writer.write_eof()
            assert await read_acks(reader, 1) == [b"ACK:" + msg(1)]

    run(scenario())


def test_item9_end_block_split_across_reads_is_one_frame() -> None:
    async def scenario() -> None:
        async with serving() as server, connection(server) as (reader, writer):
            writer.write(START_BLOCK + msg(1) + END_BLOCK[:1])
            await writer.drain()
            writer.write(END_BLOCK[1:] + frame(msg(2)))
            await writer.drain()
            assert await read_acks(reader, 2) == [b"ACK:" + msg(1), b"ACK:" + msg(2)]

    run(scenario())


def test_item8_slowloris_is_closed_at_the_idle_deadline_although_bytes_keep_coming() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout=0.5, frame_timeout=60) as server, connection(server) as (reader, writer):
            writer.write(START_BLOCK)
            loop = asyncio.get_running_loop()
            started = loop.time()
            closed = False
            while loop.time() - started < GUARD:
                try:
                    writer.write(b"x")
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
                if reader.at_eof() or (await _eof_within(reader, 0.05)):
                    closed = True
                    break
            assert closed
            assert server.timed_out_total == 1

    run(scenario())


def test_item8_frame_must_complete_within_the_frame_deadline() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout=60, frame_timeout=0.3) as server, connection(server) as (reader, writer):
            writer.write(frame(msg(1)))
            await writer.drain()
            assert await read_acks(reader, 1) == [b"ACK:" + msg(1)]
            writer.write(START_BLOCK + b"MSH|")
            await writer.drain()
            assert await read_until_eof(reader) == b""
            assert server.timed_out_total == 1

    run(scenario())


def test_item8_connections_over_the_per_peer_cap_are_refused_and_others_still_served() -> None:
    async def scenario() -> None:
        async with serving(max_connections_per_peer=3) as server, AsyncExitStack() as stack:
            held = [await stack.enter_async_context(connection(server)) for _ in range(3)]
            await asyncio.sleep(0.05)
            reader, _writer = await stack.enter_async_context(connection(server))
            assert await read_until_eof(reader) == b""
            assert server.refused_total == 1
            held_reader, held_writer = held[0]
            held_writer.write(frame(msg(1)))
            await held_writer.drain()
            assert await read_acks(held_reader, 1) == [b"ACK:" + msg(1)]

    run(scenario())


def test_item8_connections_over_the_global_cap_are_refused() -> None:
    async def scenario() -> None:
        async with serving(max_connections=2, max_connections_per_peer=10) as server, AsyncExitStack() as stack:
            for _ in range(2):
                await stack.enter_async_context(connection(server))
            await asyncio.sleep(0.05)
            reader, _ = await stack.enter_async_context(connection(server))
            assert await read_until_eof(reader) == b""
            assert server.refused_total == 1

    run(scenario())


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
