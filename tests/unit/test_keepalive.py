"""Rest-hook connections are kept alive when the answer is small, and closed when it is not read.

A real loopback server counts the TCP connections it accepts and the requests on each: two deliveries
answered with a small body share one connection; an answer declared larger than ``DRAIN_BYTES`` is left
unread (it could be anything, of any size) and its connection closed, so the next delivery opens another.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.subscriptions.channels import DRAIN_BYTES, DeliveryResult, RestHookChannel, delivery_client


async def _two_deliveries(answer: bytes) -> tuple[list[DeliveryResult], list[int]]:
    """Two sends through one client; the requests seen on each accepted connection."""
    per_connection: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_connection.append(0)
        index = len(per_connection) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                per_connection[index] += 1
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = delivery_client()
    results = []
    try:
        channel = RestHookChannel(client, timeout=5.0)
        for key in ("s:1", "s:2"):
            results.append(
                await channel.send(
                    endpoint=f"http://127.0.0.1:{port}/hook",
                    body=b"{}",
                    headers=[],
                    secret="k",
                    idempotency_key=key,
                    address="127.0.0.1",
                )
            )
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    return results, per_connection


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_a_small_answer_is_read_and_its_connection_reused() -> None:
    results, per_connection = run(_two_deliveries(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}'))
    assert [r.ok for r in results] == [True, True]
    assert per_connection == [2]


def test_a_large_answer_is_left_unread_and_its_connection_closed() -> None:
    big = DRAIN_BYTES + 1
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % big + b"x" * big
    results, per_connection = run(_two_deliveries(answer))
    assert [r.ok for r in results] == [True, True]
    assert per_connection == [1, 1]


def test_a_chunked_answer_is_left_unread_and_its_connection_closed() -> None:
    answer = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    results, per_connection = run(_two_deliveries(answer))
    assert [r.ok for r in results] == [True, True]
    assert per_connection == [1, 1]
