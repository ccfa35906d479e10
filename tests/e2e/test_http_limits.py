"""Issue 12 item 8 (HTTP side): the request head has a size limit and a deadline, on a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway import cli
from gateway.api.server import HeaderDeadlineProtocol, uvicorn_config
from gateway.config import Settings

pytestmark = pytest.mark.e2e


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def serving(**limits: Any) -> AsyncIterator[int]:
    settings = Settings(http_host="127.0.0.1", http_port=0, **limits)
    server = uvicorn.Server(uvicorn_config(_app, settings, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def _read_all(reader: asyncio.StreamReader, seconds: float) -> bytes:
    async with asyncio.timeout(seconds):
        return await reader.read()


def test_item8_a_trickled_request_head_is_cut_at_the_header_deadline() -> None:
    async def scenario() -> tuple[bool, float]:
        async with serving(http_header_timeout=0.5) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            closed = False
            while loop.time() - started < 5:
                try:
                    writer.write(b"X-Slow: a\r\n")  # a header line every 0.1 s: bytes keep coming
                    await writer.drain()
                    async with asyncio.timeout(0.1):
                        closed = await reader.read(1) == b""
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                if closed:
                    break
            writer.close()
            return closed, loop.time() - started

    closed, elapsed = asyncio.run(scenario())
    assert closed
    assert elapsed < 4


def test_item8_the_deadline_does_not_cut_keep_alive_requests_sent_in_time() -> None:
    async def scenario() -> list[bytes]:
        async with serving(http_header_timeout=0.5, http_keepalive_timeout=5) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers = []
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                async with asyncio.timeout(5):
                    answers.append(await reader.readuntil(b"ok"))
                await asyncio.sleep(0.3)  # under the deadline each time, over it in total
            writer.close()
            return answers

    answers = asyncio.run(scenario())
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)


@pytest.mark.parametrize("terminated", [True, False], ids=["whole", "streaming"])
def test_item8_an_oversized_request_head_is_refused(terminated: bool) -> None:
    async def scenario() -> bytes:
        async with serving(http_max_header_bytes=4096) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + (b"\r\n\r\n" if terminated else b""))
            await writer.drain()
            answer = await _read_all(reader, 5)
            writer.close()
            return answer

    assert asyncio.run(scenario()).startswith(b"HTTP/1.1 431")


def test_item8_a_body_arriving_with_its_head_does_not_count_as_head() -> None:
    async def scenario() -> bytes:
        async with serving(http_max_header_bytes=4096) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b"b" * 20_000
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + body)
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.readuntil(b"ok")
            writer.close()
            return answer

    assert asyncio.run(scenario()).startswith(b"HTTP/1.1 200")


def test_item8_serve_runs_uvicorn_with_the_gateways_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``gateway serve`` hands uvicorn the configured limits (GATEWAY_HTTP_* settings), not uvicorn's defaults."""
    seen: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.append(self.config))
    for name, value in {
        "HTTP_MAX_HEADER_BYTES": "8192",
        "HTTP_HEADER_TIMEOUT": "3",
        "HTTP_KEEPALIVE_TIMEOUT": "7",
        "HTTP_MAX_CONNECTIONS": "42",
    }.items():
        monkeypatch.setenv(f"GATEWAY_{name}", value)
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    assert cli.main(["serve", "--database-url", url, "--http-port", "0", "--mllp-port", "0"]) == 0
    (config,) = seen
    assert config.h11_max_incomplete_event_size == 8192
    assert config.timeout_keep_alive == 7
    assert config.limit_concurrency == 42
    assert isinstance(config.http, type) and issubclass(config.http, HeaderDeadlineProtocol)
    assert (config.http.header_timeout, config.http.max_head_bytes) == (3.0, 8192)


def test_item8_an_idle_keep_alive_connection_is_closed() -> None:
    async def scenario() -> tuple[bytes, float]:
        async with serving(http_keepalive_timeout=1) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            started = asyncio.get_running_loop().time()
            answer = await _read_all(reader, 8)  # returns once the server closes the idle connection
            writer.close()
            return answer, asyncio.get_running_loop().time() - started

    answer, elapsed = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200")
    assert elapsed < 6


def test_item8_connections_over_the_limit_get_503() -> None:
    async def scenario() -> bytes:
        async with serving(http_max_connections=2) as port:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            for _, writer in held:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # heads left open: both connections stay busy
                await writer.drain()
            await asyncio.sleep(0.1)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.readuntil(b"\r\n")
            for _, other in [*held, (reader, writer)]:
                other.close()
            return answer

    assert asyncio.run(scenario()).startswith(b"HTTP/1.1 503")
