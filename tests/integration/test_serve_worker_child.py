"""One worker of ``gateway serve --workers``, in this process: it serves the sockets it is handed (not ports
of its own), says *ready* on its pipe, answers /metrics as a worker, and stops when its lifeline ends.

The parent's side (binding, spawning, supervising) is in ``tests/e2e/test_serve_workers.py`` and
``tests/unit/test_workers.py``; here the worker runs in the test's process so that what it does is seen
from inside (the store is SQLite: only the parent refuses several workers on it).
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import threading
from pathlib import Path

import httpx
import pytest

from gateway import cli, workers
from gateway.api.app import create_app
from gateway.config import Settings
from gateway.hl7.mllp import MLLPClient
from gateway.runtime import Runtime
from tests.messages import Adt


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_serves_the_inherited_sockets_until_its_lifeline_ends(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_dir = tmp_path / "metrics"  # fresh, as the parent makes it: every *.db file there is read as metrics
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    (http,) = workers.bind_listeners("127.0.0.1", 0, count=1, backlog=8)
    (mllp,) = workers.bind_listeners("127.0.0.1", 0, count=1, backlog=8)
    http_port, mllp_port = http.getsockname()[1], mllp.getsockname()[1]
    lifeline_read, lifeline_write = os.pipe()
    ready_read, ready_write = os.pipe()
    flag = workers.Inherited(3, os.dup(http.fileno()), os.dup(mllp.fileno()), lifeline_read, ready_write).flag()
    seen: dict[str, object] = {}

    def parent() -> None:
        """What the test checks while the worker serves; then the parent "dies" (its end of the lifeline)."""
        try:
            seen["ready"] = os.read(ready_read, 1)
            seen["ack"] = asyncio.run(_send(mllp_port, Adt(control_id="CHILD-1").bytes()))
            seen["metrics"] = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text
        finally:
            os.close(lifeline_write)

    watcher = threading.Thread(target=parent)
    watcher.start()
    try:
        code = cli.main(["serve", "--database-url", database_url, "--worker-child", flag])
    finally:
        watcher.join(timeout=60)
        os.close(ready_read)
        http.close()
        mllp.close()
    assert code == 0
    assert seen["ready"] == b"r"
    assert b"MSA|AA|CHILD-1" in seen["ack"]  # type: ignore[operator]
    # The sums over the workers' files are seen in tests/e2e (prometheus_client chose its in-memory values
    # when this process imported it); here: what the worker answers itself.
    body = str(seen["metrics"])
    assert 'gateway_db_pool_size{worker="3"}' in body  # labelled: the answering worker's pool
    assert "process_cpu_seconds_total" not in body  # one process's: left out with several workers
    assert not re.search(r"^gateway_mllp_frames_total ", body, re.M)  # no unlabelled count of this process alone


async def _send(port: int, message: bytes) -> bytes:
    async with MLLPClient("127.0.0.1", port, timeout=30) as client:
        return await client.send(message)


def test_the_runtime_is_stopped_even_when_the_live_sampler_failed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sampler that died (say, on an unreadable multiprocess metrics file) must not leave the writers and
    the MLLP listener running at shutdown: its error comes after the stop, not instead of it."""
    runtime = Runtime.build(settings)
    app = create_app(runtime)
    stopped: list[bool] = []
    real_stop = runtime.stop

    async def stop() -> None:
        await real_stop()
        stopped.append(True)

    async def broken() -> None:
        raise struct.error("unpack_from requires a buffer")

    monkeypatch.setattr(runtime, "stop", stop)
    monkeypatch.setattr(app.state.live, "run", broken)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0.01)

    try:
        with pytest.raises(struct.error):
            asyncio.run(scenario())
    finally:
        runtime.close()
    assert stopped == [True]
