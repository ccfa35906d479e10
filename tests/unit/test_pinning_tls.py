"""Issue 12 item 7 over TLS: a rest-hook to an https receiver, with a real certificate (trustme).

The endpoint's name resolves (patched resolver) to the receiver's address, which is vetted and pinned:
the connection goes there, SNI and Host keep the name, and the certificate is verified against the
name, not the address. DNS then "rebinds" the name to another listener (an impostor holding a valid
certificate for the same name): nothing reaches it, because nothing resolves the name again.
The loopback receiver stands in for a public host, so the vetting's address check is relaxed for
127.0.0.1 alone; every other address is judged as usual.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import trustme

from gateway.config import Settings
from gateway.db.repo import SubscriptionRecord
from gateway.subscriptions import delivery, endpoints
from gateway.subscriptions.channels import DeliveryResult, delivery_client
from gateway.subscriptions.delivery import RestHook

NAME = "platform.rebind.test"
VETTED, REBOUND = "127.0.0.1", "127.0.0.2"


@dataclass
class Listener:
    """A TLS receiver: the SNI names it was offered and the request heads it got."""

    names: list[str | None] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def receiver(ca: trustme.CA, host: str, port: int, *, cert_for: str = NAME) -> AsyncIterator[Listener]:
    seen = Listener()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_for).configure_cert(context)
    context.sni_callback = lambda sock, name, ctx: seen.names.append(name)  # type: ignore[assignment,func-returns-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, ssl=context)
    try:
        yield seen
    finally:
        server.close()


class Dns:
    """The name's answers over time: the vetted address first, then the rebinding one for ever."""

    def __init__(self, port: int) -> None:
        self.port, self.asked = port, 0

    def __call__(self, host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host.rstrip(".").lower() != NAME:
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        self.asked += 1
        address = VETTED if self.asked == 1 else REBOUND
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, self.port))]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch, unused_port: int) -> Iterator[Dns]:
    answers = Dns(unused_port)
    original = endpoints._refusal

    def refusal(host: str, address: endpoints.IPAddress) -> str | None:
        return None if str(address) == VETTED else original(host, address)

    monkeypatch.setattr(endpoints, "_refusal", refusal)
    monkeypatch.setattr(
        delivery,
        "vet_endpoint",
        lambda url, *, allowlist: endpoints.vet_endpoint(url, allowlist=allowlist, resolver=answers),
    )
    monkeypatch.setattr(socket, "getaddrinfo", answers)  # what a second resolution would ask
    yield answers


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind((VETTED, 0))
        port: int = sock.getsockname()[1]
    return port


def subscription(port: int) -> SubscriptionRecord:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    return SubscriptionRecord(
        id="sub-tls", status="active", topic="http://example.org/topic", endpoint=f"https://{NAME}:{port}/hook",
        channel_type="rest-hook", payload_content="id-only", headers=[], filters=[], secret="s" * 32,
        events_since_start=0, error=None, created_at=now,
    )  # fmt: skip


async def send(ca: trustme.CA, port: int) -> DeliveryResult:
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    client = delivery_client(ssl_context=trust)
    try:
        hook = RestHook(client, Settings(delivery_timeout=5))
        return await hook.send(subscription(port), delivery.Outgoing(body=b"{}"), key="sub-tls:1")
    finally:
        await client.aclose()


def test_https_delivery_goes_to_the_vetted_address_with_the_names_sni_host_and_certificate(
    ca: trustme.CA, dns: Dns
) -> None:
    async def scenario() -> tuple[DeliveryResult, Listener, Listener]:
        async with receiver(ca, VETTED, dns.port) as good, receiver(ca, REBOUND, dns.port) as impostor:
            return await send(ca, dns.port), good, impostor

    result, good, impostor = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    assert result.ok, result
    assert dns.asked == 1  # resolved once, by the vetting
    assert good.names == [NAME]
    assert len(good.heads) == 1 and f"host: {NAME}:{dns.port}".encode() in good.heads[0].lower()
    assert impostor.names == impostor.heads == []


def test_each_send_vets_again_and_refuses_the_rebound_answer(ca: trustme.CA, dns: Dns) -> None:
    """Two sends: each vets afresh. The first vetting saw the receiver; the second sees the rebinding
    answer, which is refused like any loopback address: the impostor gets nothing either time."""

    async def scenario() -> tuple[list[DeliveryResult], Listener, Listener]:
        async with receiver(ca, VETTED, dns.port) as good, receiver(ca, REBOUND, dns.port) as impostor:
            return [await send(ca, dns.port), await send(ca, dns.port)], good, impostor

    (first, second), good, impostor = asyncio.run(asyncio.wait_for(scenario(), timeout=20))
    assert first.ok, first
    assert not second.ok and not second.retryable
    assert second.error is not None and REBOUND in second.error
    assert len(good.heads) == 1
    assert impostor.names == impostor.heads == []


def test_the_certificate_is_checked_against_the_name_not_the_pinned_address(ca: trustme.CA, dns: Dns) -> None:
    """The receiver at the vetted address holds a certificate for another name (or for the address
    only): the handshake fails, nothing is sent."""

    async def scenario(cert_for: str) -> tuple[DeliveryResult, Listener]:
        async with receiver(ca, VETTED, dns.port, cert_for=cert_for) as wrong:
            return await send(ca, dns.port), wrong

    for cert_for in ("other.example", VETTED):
        dns.asked = 0
        result, wrong = asyncio.run(asyncio.wait_for(scenario(cert_for), timeout=20))
        assert not result.ok and result.retryable, (cert_for, result)
        assert result.error == "ConnectError", (cert_for, result)
        assert wrong.names == [NAME] and wrong.heads == []
