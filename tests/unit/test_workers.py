"""``gateway serve --workers``: refusals at start, the supervisor with stand-in children, per-worker metrics.

The stand-in children are tiny Python scripts given the same hidden flag a worker gets: they say *ready*
on the inherited pipe (or not), die or wait as each test needs. The real serve is in
``tests/e2e/test_serve_workers.py``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric

from gateway import cli, metrics, workers
from gateway.metrics import ServiceMirror, StoreCollector


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_several_workers_on_sqlite_are_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path / 'g.db'}"
    code, err = run(capsys, "serve", "--workers", "2", "--database-url", store, "--http-port", "0", "--mllp-port", "0")
    assert code == 2 and "refusing to start 2 workers on SQLite: it has one writer" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.setenv("GATEWAY_WORKERS", "3")  # the setting says the same
    code, err = run(capsys, "serve", "--database-url", store, "--http-port", "0", "--mllp-port", "0")
    assert code == 2 and "refusing to start 3 workers on SQLite" in err
    assert not (tmp_path / "g.db").exists()  # refused before anything was opened


@pytest.mark.parametrize("count", ["0", "-1"])
def test_fewer_than_one_worker_is_a_usage_error(capsys: pytest.CaptureFixture[str], count: str) -> None:
    code, err = run(capsys, "serve", "--workers", count, "--database-url", "sqlite://")
    assert code == 2 and err.strip() == f"gateway: --workers (GATEWAY_WORKERS) must be at least 1, not {count}"


def test_listeners_share_one_port_and_a_taken_port_is_one_line() -> None:
    sockets = workers.bind_listeners("127.0.0.1", 0, count=3, backlog=8)
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1
        with socket.socket() as taken:  # a port held without SO_REUSEPORT cannot be joined
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(cli.StartupError, match=r"MLLP port 127\.0\.0\.1:\d+ is not available"):
                cli._listen("127.0.0.1", taken.getsockname()[1], "MLLP", count=2, backlog=8)
    finally:
        cli._close(sockets)


def test_the_hidden_flag_carries_the_index_and_descriptors() -> None:
    inherited = workers.Inherited(2, 5, 6, 7, 8)
    assert workers.Inherited.parse(inherited.flag()) == inherited


#: A stand-in worker: ``sys.argv[-1]`` is the hidden flag's value; ``BEHAVIOUR`` is replaced per test.
CHILD = """
import os, signal, sys, time
index, http, mllp, lifeline, ready = (int(v) for v in sys.argv[-1].split(","))
starts = {starts!r}
with open(starts, "a") as f:
    f.write(f"{{index}}\\n")
count = open(starts).read().split().count(str(index))
BEHAVIOUR
"""
SAY_READY = 'os.write(ready, b"r")'
WAIT_FOR_SIGTERM = "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nwhile True: time.sleep(0.05)"


def _supervisor(tmp_path: Path, behaviour: str, *, count: int = 1) -> tuple[workers.Supervisor, Path]:
    starts = tmp_path / "starts"
    script = CHILD.format(starts=str(starts)).replace("BEHAVIOUR", textwrap.dedent(behaviour))
    http = workers.bind_listeners("127.0.0.1", 0, count=count, backlog=8)
    mllp = workers.bind_listeners("127.0.0.1", 0, count=count, backlog=8)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    supervisor = workers.Supervisor(
        command=[sys.executable, "-c", script, "serve"],
        count=count,
        http=http,
        mllp=mllp,
        env={"PATH": "/usr/bin:/bin", metrics.MULTIPROC_ENV: str(metrics_dir)},
    )
    return supervisor, starts


@pytest.fixture
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "RESTART_DELAY", 0.05)
    monkeypatch.setattr(workers, "STOP_GRACE", 10.0)


def _stop_when(supervisor: workers.Supervisor, condition: Callable[[], bool]) -> Iterator[None]:
    """What a SIGTERM does (``stopping``), from a thread once ``condition`` holds: ``run`` needs the main one."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        supervisor.stopping = True

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    yield
    thread.join()


def _close(supervisor: workers.Supervisor) -> None:
    cli._close(supervisor.http + supervisor.mllp)


def test_a_worker_that_cannot_start_ends_the_parent_with_its_status(tmp_path: Path) -> None:
    supervisor, starts = _supervisor(tmp_path, "sys.exit(5)")
    try:
        assert supervisor.run() == 5
    finally:
        _close(supervisor)
    assert starts.read_text().split() == ["1"]  # not restarted: a bad start is not a crash


def test_a_worker_that_dies_is_restarted_and_all_stop_cleanly(tmp_path: Path, quick_restarts: None) -> None:
    behaviour = f"""
    {SAY_READY}
    if index == 1 and count < 3:
        os._exit(9)  # dies twice after serving; its third start lives
    {WAIT_FOR_SIGTERM.replace(chr(10), chr(10) + "    ")}
    """
    supervisor, starts = _supervisor(tmp_path, behaviour, count=2)
    try:
        for _ in _stop_when(supervisor, lambda: starts.exists() and starts.read_text().split().count("1") == 3):
            assert supervisor.run() == 0
    finally:
        _close(supervisor)
    assert sorted(starts.read_text().split()) == ["1", "1", "1", "2"]
    assert supervisor.children[0].delay == pytest.approx(0.1)  # doubled: it died again soon after its restart
    assert all(child.process is None for child in supervisor.children)  # every child waited for


def test_a_worker_deaf_to_sigterm_is_killed_past_the_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "STOP_GRACE", 0.5)
    behaviour = f"signal.signal(signal.SIGTERM, signal.SIG_IGN)\n{SAY_READY}\nwhile True: time.sleep(0.05)"
    supervisor, starts = _supervisor(tmp_path, behaviour)
    try:
        for _ in _stop_when(supervisor, lambda: supervisor.children[0].ready if supervisor.children else False):
            assert supervisor.run() == 0
    finally:
        _close(supervisor)
    assert starts.read_text().split() == ["1"]


class _Listener:
    connections_total = 0
    refused_total = 0
    messages_total = 0
    oversize_total = 0
    timed_out_total = 0


class _Delivery:
    delivered_total = 0


def _values(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        sample.labels.get("worker", ""): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_the_mirror_copies_a_workers_counts_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()  # stands for the multiprocess files the real counters write

    def counter(name: str, documentation: str, labelnames: list[str], **_: object) -> Counter:
        return Counter(name, documentation, labelnames, registry=registry)

    monkeypatch.setattr(metrics, "Counter", counter)
    listener, delivery = _Listener(), _Delivery()
    mirror = ServiceMirror(worker="2", mllp=lambda: listener, delivery=lambda: delivery)
    assert _values(registry, "gateway_mllp_frames_total") == {"2": 0.0}  # the series exist from the start
    listener.messages_total, listener.connections_total, delivery.delivered_total = 5, 2, 1
    mirror.sync()
    mirror.sync()  # nothing new: nothing added
    listener.messages_total = 7
    mirror.sync()
    assert _values(registry, "gateway_mllp_frames_total") == {"2": 7.0}
    assert _values(registry, "gateway_mllp_connections_total") == {"2": 2.0}
    assert _values(registry, "gateway_outbox_rows_delivered_total") == {"2": 1.0}


def test_the_mirror_copies_once_more_when_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = _Listener()
    mirror = ServiceMirror(worker="9", mllp=lambda: listener, delivery=lambda: None)
    seen: list[int] = []
    monkeypatch.setattr(mirror, "sync", lambda: seen.append(listener.messages_total))

    async def scenario() -> None:
        task = asyncio.create_task(mirror.run(interval=0.01))
        await asyncio.sleep(0.05)
        listener.messages_total = 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert seen[-1] == 3 and len(seen) >= 2


def test_pool_gauges_name_the_worker_that_answered() -> None:
    collector = StoreCollector(lambda: ([], {}), lambda: {"size": 4, "checked_out": 1, "overflow": 0}, worker="2")
    families: list[Metric] = list(collector.collect())
    pool = next(f for f in families if f.name == "gateway_db_pool_checked_out")
    assert [(s.labels, s.value) for s in pool.samples] == [({"worker": "2"}, 1)]
    assert "worker answering this scrape" in pool.documentation


def test_the_summed_registry_needs_the_multiprocess_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    with pytest.raises(RuntimeError, match="not one of several workers"):
        metrics.aggregated_registry()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    assert list(metrics.aggregated_registry().collect()) == []  # no worker wrote yet
