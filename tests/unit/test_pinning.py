"""Issue 12 items 6 and 7, and the rest-hook total deadline, against real loopback sockets.

The delivery client connects to the address vetted before the send, never to a second DNS answer:
the endpoint host names here (``*.rebind.test``) do not resolve at all, so a request that arrives
proves the connection used the pin, and kept the host name in the Host header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.subscriptions.channels import (
    DeliveryResult,
    RestHookChannel,
    channel_header_refusal,
    delivery_client,
    parse_channel_headers,
)
from gateway.subscriptions.endpoints import check_endpoint, vet_endpoint

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one byte every 50 ms, forever: each read is quick, the whole never ends."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.05)


async def _deliver(
    reply: Reply, *, host: str, pin: str | None, deadline: float = 5.0
) -> tuple[DeliveryResult, list[bytes]]:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        try:
            await reply(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = delivery_client()
    try:
        channel = RestHookChannel(client, timeout=deadline)
        result = await channel.send(
            endpoint=f"http://{host}:{port}/hook",
            body=b"{}",
            headers=["Authorization: Bearer t"],
            secret="",
            idempotency_key="s:1",
            address=pin,
        )
    finally:
        await client.aclose()
        server.close()
    return result, heads


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_item7_connection_goes_to_the_pinned_address_and_keeps_the_host_name() -> None:
    result, heads = run(_deliver(_ok, host="platform.rebind.test", pin="127.0.0.1"))
    assert result.ok, result
    assert b"\r\nhost: platform.rebind.test:" in heads[0].lower()


def test_item7_a_host_pinned_to_itself_is_resolved_as_usual_for_allow_listed_names() -> None:
    result, heads = run(_deliver(_ok, host="localhost", pin=None))
    assert result.ok, result
    assert len(heads) == 1


def test_item7_an_unresolvable_name_without_pin_never_connects() -> None:
    result, heads = run(_deliver(_ok, host="platform.rebind.test", pin=None))
    assert not result.ok
    assert heads == []


def test_rest_hook_request_has_a_total_deadline_not_a_per_read_one() -> None:
    loop_time: list[float] = []

    async def timed() -> tuple[DeliveryResult, list[bytes]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        out = await _deliver(_trickle, host="platform.rebind.test", pin="127.0.0.1", deadline=0.5)
        loop_time.append(loop.time() - start)
        return out

    result, _ = run(timed())
    assert result == DeliveryResult(ok=False, status_code=None, error="deadline exceeded", retryable=True)
    assert loop_time[0] < 5  # a per-read timeout of 0.5 s would wait for the 10,000 bytes (500 s)


@pytest.mark.parametrize(
    "host",
    [
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 well-known prefix
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "64:ff9b:1:7f00:1::",  # NAT64 local-use prefix (RFC 8215)
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:0:7f00:1",  # IPv4-translated
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
    ],
)
def test_item7_ipv6_forms_wrapping_a_private_ipv4_are_refused(host: str) -> None:
    refusal = check_endpoint(f"https://[{host}]/hook", allowlist=[])
    assert refusal is not None and "wrapped in" in refusal


def test_item7_the_same_forms_returned_by_dns_are_refused_too() -> None:
    def resolver(host: str, port: int | None) -> list[tuple[Any, ...]]:
        return [(10, 1, 6, "", ("2002:7f00:1::", port or 443, 0, 0))]

    vetted = vet_endpoint("https://platform.example/hook", allowlist=[], resolver=resolver)
    assert vetted.address is None
    assert vetted.refusal is not None and "loopback" in vetted.refusal


def test_item7_a_public_address_is_vetted_and_pinned() -> None:
    def resolver(host: str, port: int | None) -> list[tuple[Any, ...]]:
        return [(2, 1, 6, "", ("93.184.216.34", port or 443))]

    vetted = vet_endpoint("https://platform.example/hook", allowlist=[], resolver=resolver)
    assert (vetted.host, vetted.address, vetted.refusal) == ("platform.example", "93.184.216.34", None)
    assert check_endpoint("https://[2606:4700::1111]/hook", allowlist=[]) is None


@pytest.mark.parametrize(
    "header",
    [
        "Transfer-Encoding: chunked",
        "Content-Length: 0",
        "Host: evil.example",
        "Connection: close",
        "upgrade: h2c",
        "Keep-Alive: 5",
        "TE: trailers",
        "Proxy-Authorization: Basic x",
    ],
)
def test_item6_hop_by_hop_and_framing_headers_are_refused_by_name(header: str) -> None:
    refusal = channel_header_refusal(["Authorization: Bearer t", header])
    name, _, value = header.partition(":")
    assert refusal is not None and "channel.header[1]" in refusal and name in refusal
    assert value.strip() not in refusal.replace(name, "")  # the value is never echoed
    assert name.lower() not in {k.lower() for k in parse_channel_headers([header])}  # and never sent


def test_item6_ordinary_headers_are_accepted() -> None:
    assert channel_header_refusal(["Authorization: Bearer abc:def", "X-Platform-Tenant: dac-42"]) is None
    assert channel_header_refusal(["X-Inject: a\r\nX-Evil: 1"]) is not None
