"""MLLP ingest throughput and ACK latency, end to end through the real gateway (in-process).

Starts the gateway's MLLP listener and delivery worker (``Runtime``) on a temporary SQLite file by
default, with the gateway's default durability settings (WAL, ``synchronous=FULL``, one transaction and
one commit per message before its ACK). Generates distinct stays from the demo A01/A03 fixtures by byte
substitution (MSH-10, the IPP in PID-3, the visit number in PV1-19, the movement id in ZBE-1), spreads
the stays over C concurrent MLLP connections (each sends its stays' A01 then A03 one at a time and
waits for each ACK, as a hospital engine does) and prints throughput, ACK latency and peak RSS.

    .venv/bin/python bench/mllp_ingest.py --messages 2000 --connections 4
    .venv/bin/python bench/mllp_ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/mllp_ingest.py --instances 3 --connections 16 --database-url postgresql+psycopg://...
    .venv/bin/python bench/mllp_ingest.py --workers 3 --connections 16 --database-url postgresql+psycopg://...

The sender runs in the same process and event loop as the gateway, so the figures include its cost.
With ``--instances N`` (N > 1) the gateway runs instead in N subprocesses on the same store (the
``Runtime``, each with its own MLLP port and delivery worker, as ``gateway serve`` runs), the
connections spread over them round-robin; CPU is then the instances' and the sender's together, and
each instance's own is printed beside. With ``--workers N`` the real ``gateway serve --workers N`` runs
instead (a subprocess: one MLLP port, N worker processes behind it; ``--workers 1`` is the plain serve);
CPU is then its parent's, its workers' and the sender's, and a line per worker gives the frames it took.
Exit status 1 when any message is not acknowledged AA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import resource
import secrets
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from floor import floor_server
from peer import peer_server
from sqlalchemy import create_engine, text

from gateway import heap
from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.hl7.mllp import MLLPClient
from gateway.runtime import Runtime

BENCH = Path(__file__).resolve()
ROOT = BENCH.parent.parent
FIXTURES = ROOT / "fixtures" / "demo"
#: seconds an instance may take to start (imports, mapping tables) and to stop (writers drained)
INSTANCE_TIMEOUT = 120
ADMISSION = (FIXTURES / "01_A01_admission.hl7").read_bytes()
DISCHARGE = (FIXTURES / "02_A03_discharge.hl7").read_bytes()


def _replace_once(text: bytes, old: bytes, new: bytes) -> bytes:
    count = text.count(old)
    if count != 1:
        raise SystemExit(f"fixture pattern {old!r} found {count} times, expected once: fixtures changed?")
    return text.replace(old, new)


def stay(run: str, k: int) -> list[bytes]:
    """A01 then A03 of stay ``k``: a new patient (IPP) and a new visit, unique per run tag."""
    ipp, visit = f"9{run}{k:06d}".encode(), f"8{run}{k:07d}".encode()
    out = []
    for template, control, movement in ((ADMISSION, b"DEMO-0001", b"MVT-1001"), (DISCHARGE, b"DEMO-0002", b"MVT-1002")):
        message = _replace_once(template, b"|" + control + b"|", f"|B{run}-{k:07d}-{control[-1:].decode()}|".encode())
        message = _replace_once(message, b"|480001^", b"|" + ipp + b"^")
        message = _replace_once(message, b"|2026004512^", b"|" + visit + b"^")
        message = _replace_once(message, b"|" + movement + b"^", f"|MVT-{run}-{k}-{control[-1:].decode()}^".encode())
        out.append(message)
    return out


def control_id(message: bytes) -> bytes:
    return message.split(b"\r", 1)[0].split(b"|")[9]


def ack_code(ack: bytes, expected_control_id: bytes) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA|"):
            fields = segment.split(b"|")
            code = fields[1].decode("ascii", "replace")
            echoed = fields[2] if len(fields) > 2 else b""
            return code if echoed == expected_control_id else f"{code}(MSA-2 mismatch)"
    return "no MSA"


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    first_bad: bytes | None = None


async def sender(
    port: int, messages: list[bytes], results: Results, *, interval: float = 0.0, offset: float = 0.0
) -> None:
    """Send one message at a time, each after the previous one's ACK; with ``interval``, also not before its
    slot on a fixed schedule, ``offset`` seconds into it (a paced feed: latency is measured from the slot
    when the sender is late)."""
    async with MLLPClient("127.0.0.1", port, timeout=60) as client:
        start = time.perf_counter() + offset
        for i, message in enumerate(messages):
            due = start + i * interval
            if interval and (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            started = max(due, start) if interval else time.perf_counter()
            ack = await client.send(message)
            results.latencies.append(time.perf_counter() - started)
            code = ack_code(ack, control_id(message))
            results.codes[code] += 1
            if code != "AA" and results.first_bad is None:
                results.first_bad = ack


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(n_messages: int, connections: int) -> list[list[bytes]]:
    """Distinct stays over the connections, each stay's A03 after its A01 on the same connection."""
    run_tag = f"{secrets.randbelow(10_000):04d}"  # keeps a re-run on the same database free of duplicates
    stays = [stay(run_tag, k) for k in range((n_messages + 1) // 2)]
    per_connection: list[list[bytes]] = [[] for _ in range(connections)]
    for k, pair in enumerate(stays):
        per_connection[k % connections].extend(pair)  # A03 follows its A01 on the same connection
    excess = 2 * len(stays) - n_messages  # odd N: the last stay is admitted only
    if excess:
        per_connection[(len(stays) - 1) % connections].pop()
    return per_connection


async def send_all(
    port: int | Sequence[int], per_connection: list[list[bytes]], *, rate: float = 0.0
) -> tuple[Results, float]:
    """Every connection's messages; with ``rate``, the connections together send ``rate`` messages/s, one
    every ``1 / rate`` seconds: connection ``i``'s slots are ``i / rate`` after the first's (all at the same
    instants, they sent bursts of one message a connection). With several ports (one per instance),
    connection ``i`` goes to ``ports[i % len(ports)]``."""
    ports = [port] if isinstance(port, int) else list(port)
    results = Results()
    busy = [(ports[i % len(ports)], batch) for i, batch in enumerate(per_connection) if batch]
    interval = len(busy) / rate if rate else 0.0
    started = time.perf_counter()
    await asyncio.gather(
        *(
            sender(to, batch, results, interval=interval, offset=k / rate if rate else 0.0)
            for k, (to, batch) in enumerate(busy)
        )
    )
    return results, time.perf_counter() - started


async def floors(
    n_messages: int, connections: int, database_url: str, *, rate: float = 0.0
) -> dict[str, tuple[float, Results]]:
    """The floor server (bench/floor.py) in both modes, same messages and sender: messages/s and results."""
    out = {}
    for mode in ("one", "group"):
        per_connection = spread(n_messages, connections)
        async with floor_server(database_url, mode=mode) as port:
            results, elapsed = await send_all(port, per_connection, rate=rate)
        out[mode] = (sum(map(len, per_connection)) / elapsed, results)
    return out


async def naive_peer(
    n_messages: int, connections: int, database_url: str, *, rate: float = 0.0
) -> tuple[float, Results]:
    """The naive peer (bench/peer.py: hl7apy + fhir.resources + ORM), same messages and sender."""
    per_connection = spread(n_messages, connections)
    async with peer_server(database_url) as port:
        results, elapsed = await send_all(port, per_connection, rate=rate)
    return sum(map(len, per_connection)) / elapsed, results


def store_bytes(database_url: str) -> int:
    """Bytes the store takes on disk (SQLite: database file and WAL; PostgreSQL: the database)."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.split("///", 1)[1])
        if path.exists():  # fold the WAL back into the file first: it holds page copies, not more data
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    engine = create_engine(database_url)
    with engine.connect() as conn:
        size = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    engine.dispose()
    return size


@dataclass
class Instance:
    """A gateway subprocess of ``--instances``: its MLLP port, then what it reports when told to stop."""

    process: asyncio.subprocess.Process
    port: int
    cpu: float = 0.0
    rss_mb: float = 0.0
    messages: int = 0


async def start_instance(database_url: str) -> Instance:
    """``serve_instance`` in a subprocess (the bench's own file, ``--serve-instance``), once it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--serve-instance",
        "--database-url",
        database_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), INSTANCE_TIMEOUT)
    if not line.startswith(b"port "):
        process.kill()
        raise SystemExit(f"a gateway instance did not start: {line!r}")
    return Instance(process=process, port=int(line.split()[1]))


async def stop_instance(instance: Instance) -> None:
    """Close its stdin (the signal to stop), read the CPU and peak RSS it reports, wait for it."""
    assert instance.process.stdin is not None and instance.process.stdout is not None
    instance.process.stdin.close()
    out, _ = await asyncio.wait_for(instance.process.communicate(), INSTANCE_TIMEOUT)
    words = out.split()
    instance.cpu, instance.rss_mb = float(words[words.index(b"cpu") + 1]), float(words[words.index(b"rss") + 1])


async def serve_instance(database_url: str) -> int:
    """One instance of ``--instances``: the gateway on an ephemeral MLLP port (printed), until stdin closes;
    then its CPU since it listened and its peak RSS, on stdout. The bench migrated the store already."""
    settings = Settings(database_url=database_url, mllp_port=0, mllp_host="127.0.0.1")
    runtime = Runtime.build(settings, run_migrations=False)
    heap.settle()  # as `gateway serve` does after start-up
    await runtime.start(mllp=True, worker=True)
    assert runtime.mllp is not None
    cpu = time.process_time()
    print(f"port {runtime.mllp.port}", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
        cpu = time.process_time() - cpu
    finally:
        await runtime.stop()
        runtime.close()
    print(f"cpu {cpu:.6f} rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", flush=True)
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """The process and its children (``gateway serve --workers``' parent and workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(c) for c in children)]


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of these processes so far (``/proc/PID/stat`` fields 14 and 15)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Served:
    """What ``--workers`` reports beside the common lines: CPU and peak RSS per process, frames per worker."""

    parent_cpu: float = 0.0
    workers_cpu: float = 0.0
    peak_rss_mb: float = 0.0
    frames: dict[str, int] = field(default_factory=dict)


async def _until_serving(client: httpx.AsyncClient, process: asyncio.subprocess.Process, count: int) -> None:
    """Every worker's series in /metrics (its app is built: it serves a moment later); one: /health/ready."""
    deadline = time.monotonic() + INSTANCE_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise SystemExit(f"gateway serve --workers {count} exited with status {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if count == 1:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            elif len(_frames((await client.get("/metrics")).text)) == count:
                return
        await asyncio.sleep(0.2)
    raise SystemExit(f"gateway serve --workers {count} did not start in {INSTANCE_TIMEOUT} s")


def _frames(metrics: str) -> dict[str, int]:
    return {
        w: int(float(v)) for w, v in re.findall(r'^gateway_mllp_frames_total\{worker="(\d+)"\} (\S+)', metrics, re.M)
    }


async def ingest_in_workers(
    database_url: str, per_connection: list[list[bytes]], *, count: int, rate: float
) -> tuple[Results, float, float, Served]:
    """(results, elapsed, CPU of the serve's processes and the sender, the rest): ``gateway serve --workers``."""
    http_port, mllp_port = _free_port(), _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--log-level",
        "WARNING",  # as the in-process modes, which log nothing below it
        "serve",
        "--workers",
        str(count),
        "--database-url",
        database_url,
        "--http-port",
        str(http_port),
        "--mllp-port",
        str(mllp_port),
        cwd=ROOT,
    )
    served = Served()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
        try:
            await _until_serving(client, process, count)
            await asyncio.sleep(1.0)
            pids = _tree(process.pid)
            before = [_cpu_seconds([pid]) for pid in pids]
            cpu = time.process_time()
            results, elapsed = await send_all(mllp_port, per_connection, rate=rate)
            cpu = time.process_time() - cpu
            spent = [_cpu_seconds([pid]) - b for pid, b in zip(pids, before, strict=True)]
            served.parent_cpu, served.workers_cpu = spent[0], sum(spent[1:])
            served.peak_rss_mb = max(_peak_rss_mb(pid) for pid in pids[1:] or pids)
            if count > 1:
                await asyncio.sleep(1.0)  # the workers copy their counts every 0.5 s
                served.frames = _frames((await client.get("/metrics")).text)
        finally:
            process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(process.wait(), INSTANCE_TIMEOUT)
    if status not in (0, -signal.SIGTERM):
        raise SystemExit(f"gateway serve --workers {count} stopped with status {status}")
    return results, elapsed, cpu + served.parent_cpu + served.workers_cpu, served


class Stalls:
    """What can hold every connection's ACK at once, watched while the gateway runs (``--stalls``): the event
    loop's lag (how late a 5 ms ticker wakes: the loop busy, or waiting for the GIL a writer holds) and the
    garbage collector's pauses (each stops every thread)."""

    TICK = 0.005

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds)
        self._began = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._began))

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.TICK)
            self.lags.append(time.perf_counter() - before - self.TICK)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        gc.callbacks.append(self._on_gc)
        ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            gc.callbacks.remove(self._on_gc)

    def lines(self) -> list[str]:
        lags = self.lags or [0.0]
        oldest = [s for generation, s in self.pauses if generation == 2]
        longest = max((s for _, s in self.pauses), default=0.0)
        return [
            f"  loop lag        p50 {percentile(lags, 0.5) * 1000:.1f} ms, p99 {percentile(lags, 0.99) * 1000:.1f} ms, "
            f"max {max(lags) * 1000:.1f} ms ({len(self.lags)} ticks of {self.TICK * 1000:g} ms)",
            f"  GC pauses       {len(self.pauses)} ({len(oldest)} of generation 2), longest {longest * 1000:.1f} ms, "
            f"total {sum(s for _, s in self.pauses) * 1000:.0f} ms",
        ]


async def ingest_in_process(
    settings: Settings, per_connection: list[list[bytes]], *, rate: float, stalls: Stalls | None = None
) -> tuple[Results, float, float]:
    """(results, elapsed, CPU of this process): the gateway in this process, beside the sender."""
    runtime = Runtime.build(settings)
    heap.settle()  # as `gateway serve` does after start-up
    await runtime.start(mllp=True, worker=True)
    assert runtime.mllp is not None
    cpu = time.process_time()
    try:
        async with stalls.watching() if stalls else contextlib.nullcontext():
            results, elapsed = await send_all(runtime.mllp.port, per_connection, rate=rate)
        cpu = time.process_time() - cpu  # sender, gateway and worker threads: the steadier figure on a busy machine
    finally:
        await runtime.stop()
        runtime.close()
    return results, elapsed, cpu


async def ingest_in_instances(
    database_url: str, per_connection: list[list[bytes]], *, count: int, rate: float
) -> tuple[Results, float, float, list[Instance]]:
    """(results, elapsed, CPU of the instances and the sender, the instances): ``count`` gateway processes."""
    instances = list(await asyncio.gather(*(start_instance(database_url) for _ in range(count))))
    cpu = time.process_time()
    try:
        results, elapsed = await send_all([i.port for i in instances], per_connection, rate=rate)
        cpu = time.process_time() - cpu
    finally:
        await asyncio.gather(*(stop_instance(i) for i in instances))
    for k, batch in enumerate(per_connection):
        instances[k % count].messages += len(batch)
    return results, elapsed, cpu + sum(i.cpu for i in instances), instances


async def run(
    n_messages: int,
    connections: int,
    database_url: str,
    *,
    with_floors: bool = False,
    with_peer: bool = False,
    rate: float = 0.0,
    instances: int = 1,
    workers: int = 0,
    stalls: bool = False,
) -> int:
    per_connection = spread(n_messages, connections)
    total = sum(len(batch) for batch in per_connection)

    settings = Settings(database_url=database_url, mllp_port=0, mllp_host="127.0.0.1")
    db = make_engine(settings)
    migrate(db)  # before measuring the store, and before any instance starts (they never race to migrate)
    db.dispose()
    size_before = store_bytes(database_url)
    servers: list[Instance] = []
    served: Served | None = None
    watched = Stalls() if stalls and instances == 1 and not workers else None
    if workers:
        results, elapsed, cpu, served = await ingest_in_workers(database_url, per_connection, count=workers, rate=rate)
    elif instances > 1:
        results, elapsed, cpu, servers = await ingest_in_instances(
            database_url, per_connection, count=instances, rate=rate
        )
    else:
        results, elapsed, cpu = await ingest_in_process(settings, per_connection, rate=rate, stalls=watched)
    stored = store_bytes(database_url) - size_before
    compared = _floor_url(database_url)
    floor_figures = await floors(n_messages, connections, compared, rate=rate) if with_floors else {}
    peer_figures = await naive_peer(n_messages, connections, compared, rate=rate) if with_peer else None

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    backend = database_url.split(":", 1)[0]
    durability = f", synchronous={settings.sqlite_synchronous}" if backend.startswith("sqlite") else ""
    paced = f", paced at {rate:g} messages/s" if rate else ""
    spread_over = f", {instances} instances" if servers else ""
    spread_over = f", gateway serve --workers {workers}" if served else spread_over
    print(f"mllp_ingest: {backend}{durability}, {connections} connections{paced}{spread_over}, {os.cpu_count()} CPUs")
    print(f"  messages        {total}")
    print(f"  elapsed         {elapsed:.2f} s")
    print(f"  throughput      {total / elapsed:.0f} messages/s")
    whose = f"{instances} instances and the sender" if servers else "whole process, sender included"
    whose = "serve's parent and workers, and the sender" if served else whose
    print(f"  CPU             {cpu / total * 1000:.2f} ms/message ({whose})")
    print(f"  ACK latency p50 {percentile(results.latencies, 0.50) * 1000:.1f} ms")
    print(f"  ACK latency p99 {percentile(results.latencies, 0.99) * 1000:.1f} ms")
    print(f"  ACK latency max {max(results.latencies) * 1000:.1f} ms")
    print(f"  AA              {results.codes['AA']}/{total}")
    if servers:
        peak_rss_mb = max(i.rss_mb for i in servers)  # the largest instance's
    if served:
        peak_rss_mb = served.peak_rss_mb  # the largest worker's
    print(f"  peak RSS        {peak_rss_mb:.0f} MiB")
    print(f"  store growth    {stored / total / 1024:.1f} KiB/message, {2 * stored / total / 1024:.1f} KiB/stay")
    if watched is not None:
        print("\n".join(watched.lines()))
    for k, server in enumerate(servers, 1):
        print(
            f"  instance {k:<6} CPU {server.cpu:.2f} s, {server.messages} messages "
            f"({server.cpu / max(server.messages, 1) * 1000:.2f} ms/message), peak RSS {server.rss_mb:.0f} MiB"
        )
    if served:
        serving = served.workers_cpu if workers > 1 else served.parent_cpu  # one worker: serve is the process
        parts = (
            f"parent {served.parent_cpu:.2f} s, workers {served.workers_cpu:.2f} s"
            if workers > 1
            else f"one process {served.parent_cpu:.2f} s"
        )
        print(f"  serve CPU       {parts} ({serving / total * 1000:.2f} ms/message serving)")
        for worker, frames in sorted(served.frames.items()):
            print(f"  worker {worker:<8} {frames} frames")
    compared_to = [
        (f"floor, {'one commit/msg' if mode == 'one' else 'group commit'}", figures)
        for mode, figures in floor_figures.items()
    ]
    if peer_figures is not None:
        compared_to.append(("naive peer", peer_figures))
    for label, (their_rate, their_results) in compared_to:
        p99 = percentile(their_results.latencies, 0.99) * 1000
        print(
            f"  {label:22} {their_rate:,.0f} messages/s (ACK p99 {p99:.1f} ms); "
            f"gateway = {total / elapsed / their_rate:.2f}x"
        )
    if results.codes["AA"] != total:
        print(f"ERROR: not every message was acknowledged AA: {dict(results.codes)}", file=sys.stderr)
        if results.first_bad is not None:
            print(results.first_bad.decode("latin-1").replace("\r", "\n"), file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages to send (A01/A03 pairs)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent MLLP connections")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--floors", action="store_true", help="also run bench/floor.py (both modes), print ratios")
    parser.add_argument("--peer", action="store_true", help="also run the naive peer (bench/peer.py), print the ratio")
    parser.add_argument("--rate", type=float, default=0.0, help="pace the feed at this many messages/s (0: flat out)")
    parser.add_argument(
        "--instances", type=int, default=1, help="gateway processes on the same store (1: in this process)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="run the real `gateway serve --workers N` (a subprocess) instead"
    )
    parser.add_argument(
        "--stalls", action="store_true", help="also watch the event loop's lag and GC pauses (in-process only)"
    )
    parser.add_argument("--serve-instance", action="store_true", help=argparse.SUPPRESS)  # one of --instances
    args = parser.parse_args()
    if args.serve_instance:
        return asyncio.run(serve_instance(args.database_url))
    if args.messages < 1 or args.connections < 1 or args.rate < 0 or args.instances < 1 or args.workers < 0:
        parser.error("--messages, --connections and --instances must be positive, --rate and --workers not negative")
    if args.workers and args.instances > 1:
        parser.error("--workers and --instances are two ways to run several processes: choose one")
    options = {
        "with_floors": args.floors,
        "with_peer": args.peer,
        "rate": args.rate,
        "instances": args.instances,
        "workers": args.workers,
        "stalls": args.stalls,
    }
    if args.database_url:
        return asyncio.run(run(args.messages, args.connections, args.database_url, **options))
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'gateway.db'}"
        return asyncio.run(run(args.messages, args.connections, url, **options))


def _floor_url(database_url: str) -> str:
    """The floor's store: a sibling SQLite file, or the same PostgreSQL database (its own table)."""
    if database_url.startswith("sqlite"):
        return database_url.replace(".db", "-floor.db") if database_url.endswith(".db") else database_url + "-floor"
    return database_url


if __name__ == "__main__":
    sys.exit(main())
