"""``gateway serve --workers 2`` on PostgreSQL, as an operator starts it: one MLLP port, two processes serving.

The command runs as a subprocess on its own ports (0: the parent logs the ports it was given). Which
worker took a connection is read from ``/metrics`` (the per-worker MLLP counters every worker's scrape
shows), which also proves that a scrape sums over the workers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from gateway.hl7.mllp import MLLPClient
from tests.messages import Adt

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]


class Serving:
    """A running ``gateway serve --workers``: its ports, and its log lines read as they come."""

    def __init__(self, database_url: str, workers: int) -> None:
        env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_LOG_LEVEL": "INFO"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [sys.executable, "-m", "gateway", "serve", "--workers", str(workers)]
        self.process = subprocess.Popen(
            [*command, "--http-port", "0", "--mllp-port", "0"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)  # drained, or the workers' logging blocks
        self._reader.start()
        started = self.wait_for(r"HTTP on http://127\.0\.0\.1:(\d+) .*MLLP on 127\.0\.0\.1:(\d+)")
        self.http_port, self.mllp_port = int(started.group(1)), int(started.group(2))
        self.wait_for(rf"gateway: {workers} workers serving")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, *, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if found := re.search(pattern, line):
                        return found
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"{pattern!r} not logged:\n{''.join(self.lines)}")
                self._changed.wait(0.2)

    def frames(self) -> dict[str, int]:
        """Frames each worker took, from whichever worker answers (each copies its counts every 0.5 s)."""
        body = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).text
        found = re.findall(r'^gateway_mllp_frames_total\{worker="(\d+)"\} (\S+)', body, re.M)
        return {worker: int(float(value)) for worker, value in found}

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        if self.process.poll() is None:  # pragma: no cover - a failed test's clean-up
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def serving(database_url: str) -> Iterator[Serving]:
    server = Serving(database_url, workers=2)
    try:
        yield server
    finally:
        server.close()


async def _send(port: int, messages: list[bytes]) -> list[bytes]:
    """Each message on a connection of its own, all at once: the kernel spreads them over the workers."""

    async def one(message: bytes) -> bytes:
        async with MLLPClient("127.0.0.1", port, timeout=60) as client:
            return await client.send(message)

    return list(await asyncio.gather(*(one(m) for m in messages)))


def _admissions(start: int, count: int) -> list[bytes]:
    return [
        Adt(control_id=f"W{k}", ipp=f"77{k:05d}", visit=f"66{k:05d}", movement=f"MW{k}").bytes()
        for k in range(start, start + count)
    ]


def _stored(database_url: str, control_ids: list[str]) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT control_id FROM messages WHERE control_id = ANY(:ids)"), {"ids": control_ids}
            )
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def test_two_workers_serve_one_port_and_stop_on_sigterm_with_nothing_lost(serving: Serving, database_url: str) -> None:
    sent: list[bytes] = []
    acks: list[bytes] = []
    for round_ in range(10):  # until both workers took connections (the hash of each one's address decides)
        batch = _admissions(8 * round_, 8)
        sent += batch
        acks += asyncio.run(_send(serving.mllp_port, batch))
        time.sleep(0.7)
        frames = serving.frames()
        if len(frames) == 2 and all(frames.values()):
            break
    assert set(frames) == {"1", "2"} and all(frames.values()), frames
    assert sum(frames.values()) == len(sent)  # every worker's count, in one scrape
    assert all(b"MSA|AA|" in ack for ack in acks)
    assert serving.stop() == 0, "".join(serving.lines)
    control_ids = [f"W{k}" for k in range(len(sent))]
    assert _stored(database_url, control_ids) == set(control_ids)  # every AA'd message is in the store
    assert not any("Traceback" in line for line in serving.lines), "".join(serving.lines)


def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(serving: Serving, database_url: str) -> None:
    killed = int(serving.wait_for(r"worker 1 started \(pid (\d+)\)").group(1))
    mark = len(serving.lines)
    os.kill(killed, signal.SIGKILL)
    serving.wait_for(rf"worker 1 \(pid {killed}\) exited with status -9; restarting it", after=mark)
    acks = asyncio.run(_send(serving.mllp_port, _admissions(100, 6)))  # on worker 2, or queued for worker 1
    assert all(b"MSA|AA|" in ack for ack in acks)
    again = int(serving.wait_for(r"worker 1 serving \(pid (\d+)\)", after=mark).group(1))
    assert again != killed
    acks = asyncio.run(_send(serving.mllp_port, _admissions(110, 6)))
    assert all(b"MSA|AA|" in ack for ack in acks)
    assert serving.stop() == 0, "".join(serving.lines)
    control_ids = [f"W{k}" for k in [*range(100, 106), *range(110, 116)]]
    assert _stored(database_url, control_ids) == set(control_ids)
