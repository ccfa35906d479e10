"""Delivery throughput and latency: admissions in over MLLP, signed rest-hook notifications out (in-process).

Starts the gateway as ``gateway serve`` does (``Runtime`` + FastAPI app under uvicorn + MLLP listener +
delivery worker) on a temporary SQLite file by default, and a real uvicorn receiver (the demo's
``Receiver``, verifying every signature). One subscription to ``encounter-start`` with no filter, so every
admission notifies. Two phases on the same gateway:

- live: N admissions (distinct patients and stays) sent one at a time over one MLLP connection, each
  waiting for its ACK; latency is MLLP send → notification received by the receiver, per event.
- backlog: the worker is paused, N more admissions are queued, then a fresh worker drains them;
  throughput is pure delivery (claim, build, sign, POST, record), with ``--max-count`` events per request.

    .venv/bin/python bench/delivery.py --messages 500
    .venv/bin/python bench/delivery.py --messages 500 --max-count 10
    .venv/bin/python bench/delivery.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/delivery.py --rate 200 --sustain 60 [--connections 4]   # p99, backlog over time
    .venv/bin/python bench/delivery.py --backlog 100000                             # RSS while draining
    .venv/bin/python bench/delivery.py --rate 100 --sustain 60 --worker-process     # delivery in `gateway worker`

Sender and gateway share one process and event loop. The receiver (``bench/receiver.py``) shares it too,
except in the sustained run, where it is a process of its own as a platform is another system
(``--receiver-in-process`` for the earlier setup: its uvicorn and HMAC checks then take the interpreter lock
from the gateway's writer). With ``--worker-process`` (sustained and backlog runs) delivery runs in a
``gateway worker`` subprocess instead (the gateway with ``GATEWAY_RUN_WORKER=false``), and its CPU and RSS
are read from ``/proc`` apart.
Exit status 1 when an event is lost, duplicated, out of order or badly signed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from receiver import ReceiverProcess, TimingReceiver

from gateway import heap
from gateway.api.app import create_app
from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.db.repo import OutboxRecord, OutboxRepo, ResourceRepo
from gateway.demo import _subscription, free_port, serving
from gateway.hl7.mllp import MLLPClient
from gateway.runtime import Runtime
from gateway.subscriptions.service import SIGNING_SECRET
from gateway.subscriptions.worker import DeliveryWorker

ROOT = Path(__file__).resolve().parent.parent
ADMISSION = (ROOT / "fixtures" / "demo" / "01_A01_admission.hl7").read_bytes()
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
WAIT = 120.0  # seconds: a bound on each phase, far above any sane figure
AnyReceiver = TimingReceiver | ReceiverProcess


def _replace_once(text: bytes, old: bytes, new: bytes) -> bytes:
    if text.count(old) != 1:
        raise SystemExit(f"fixture pattern {old!r} not found exactly once: fixtures changed?")
    return text.replace(old, new)


def admission(run: str, k: int) -> bytes:
    """The demo A01 as the admission of stay ``k`` of patient ``k`` (unique per run tag)."""
    message = _replace_once(ADMISSION, b"|DEMO-0001|", f"|D{run}-{k:07d}|".encode())
    message = _replace_once(message, b"|480001^", f"|6{run}{k:06d}^".encode())
    message = _replace_once(message, b"|2026004512^", f"|5{run}{k:07d}^".encode())
    return _replace_once(message, b"|MVT-1001^", f"|MVT-{run}-{k}^".encode())


async def subscribe(settings: Settings, receiver: AnyReceiver, receiver_port: int, max_count: int) -> str:
    """A rest-hook subscription to every admission (``maxCount`` events a notification), created over the
    API, its signing secret given to the receiver; returns its id once the handshake was received."""
    sub_body = _subscription("encounter-start", f"http://127.0.0.1:{receiver_port}/notify", "id-only")
    del sub_body["_criteria"]  # every admission notifies
    sub_body["channel"]["extension"] = [{"url": f"{BACKPORT}/backport-max-count", "valuePositiveInt": max_count}]
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            f"http://127.0.0.1:{settings.http_port}/fhir/Subscription",
            content=json.dumps(sub_body),
            headers={"Content-Type": "application/fhir+json"},
        )
        answer.raise_for_status()
        created = answer.json()
    secret = next(e["valueString"] for e in created["channel"]["extension"] if e["url"] == SIGNING_SECRET)
    await receiver.set_secret(str(created["id"]), secret)
    async with asyncio.timeout(WAIT):
        await receiver.wait_handshake()
    return str(created["id"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def send(port: int, messages: list[bytes], *, rate: float = 0.0) -> list[float]:
    """Send one at a time, waiting for each ACK; ``rate`` > 0 paces the sends (messages/s), as a real
    feed does. Returns the send start time of each message."""
    started: list[float] = []
    async with MLLPClient("127.0.0.1", port, timeout=60) as client:
        for index, message in enumerate(messages):
            if rate > 0 and started:
                await asyncio.sleep(max(0.0, started[0] + index / rate - time.perf_counter()))
            started.append(time.perf_counter())
            ack = await client.send(message)
            if b"MSA|AA|" not in ack:
                raise SystemExit(f"message not accepted: {ack.decode('latin-1')!r}")
    return started


async def run(n: int, max_count: int, database_url: str, rate: float = 0.0) -> int:
    run_tag = f"{secrets.randbelow(10_000):04d}"
    settings = Settings(
        database_url=database_url,
        http_port=free_port(None),
        mllp_port=0,
        endpoint_allowlist=["127.0.0.1"],
        run_worker=False,  # the bench starts and pauses the worker itself
    )
    runtime = Runtime.build(settings)
    heap.settle()  # as `gateway serve` does after start-up
    receiver = TimingReceiver()
    receiver_port = free_port(None)
    worker_task: asyncio.Task[None] | None = None
    try:
        async with serving(receiver.app, receiver_port), serving(create_app(runtime), settings.http_port):
            assert runtime.mllp is not None
            mllp_port = runtime.mllp.port
            worker_task = asyncio.create_task(runtime.worker.run())

            await subscribe(settings, receiver, receiver_port, max_count)

            # -- live ------------------------------------------------------------------------------
            receiver.expect(n)
            t0 = time.perf_counter()
            sent_at = await send(mllp_port, [admission(run_tag, k) for k in range(n)], rate=rate)
            ingest_done = time.perf_counter()
            async with asyncio.timeout(WAIT):
                await receiver.wait_all()
            live_elapsed = max(receiver.arrived.values()) - t0
            latencies = [receiver.arrived[i + 1] - sent_at[i] for i in range(n)]
            live_requests = receiver.requests

            # -- backlog ---------------------------------------------------------------------------
            runtime.worker.stop()
            await worker_task
            await send(mllp_port, [admission(run_tag, n + k) for k in range(n)])
            receiver.expect(2 * n)
            drainer = DeliveryWorker(db=runtime.db, settings=settings)
            t1 = time.perf_counter()
            worker_task = asyncio.create_task(drainer.run())
            async with asyncio.timeout(WAIT):
                await receiver.wait_all()
            drain_elapsed = max(receiver.arrived.values()) - t1
            drain_requests = receiver.requests - live_requests
            drainer.stop()
            await worker_task
            worker_task = None
            await drainer.client.aclose()
    finally:
        if worker_task is not None:  # a phase failed: stop what still runs
            runtime.worker.stop()
            worker_task.cancel()
        runtime.close()

    backend = database_url.split(":", 1)[0]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"delivery: {backend}, maxCount={max_count}, {os.cpu_count()} CPUs, one MLLP connection")
    pace = f"paced at {rate:g}/s" if rate > 0 else "as fast as acknowledged"
    print(f"  live: {n} admissions sent one at a time ({pace}), each notified as it is committed")
    print(f"    ingest             {n / (ingest_done - t0):.0f} messages/s")
    print(f"    delivered          {n} events in {live_requests} requests, {live_elapsed:.2f} s")
    print(
        f"    throughput         {live_requests / live_elapsed:.0f} notifications/s ({n / live_elapsed:.0f} events/s)"
    )
    print(f"    latency p50        {percentile(latencies, 0.50) * 1000:.1f} ms  (MLLP send → receiver)")
    print(f"    latency p99        {percentile(latencies, 0.99) * 1000:.1f} ms")
    print(f"    latency max        {max(latencies) * 1000:.1f} ms")
    print(f"  backlog: {n} events queued with the worker paused, then drained")
    print(f"    delivered          {n} events in {drain_requests} requests, {drain_elapsed:.2f} s")
    print(
        f"    throughput         {drain_requests / drain_elapsed:.0f} notifications/s "
        f"({n / drain_elapsed:.0f} events/s)"
    )
    print(f"  peak RSS             {peak_rss_mb:.0f} MiB")
    problems = []
    if receiver.order != list(range(1, 2 * n + 1)):
        problems.append("events lost or out of order")
    if receiver.duplicates:
        problems.append(f"{receiver.duplicates} duplicate event(s)")
    if receiver.unsigned:
        problems.append(f"{receiver.unsigned} request(s) with a bad signature")
    if problems:
        print("ERROR: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("  every event received once, in order, signed")
    return 0


# -- sustained load and backlog memory (#14 targets) -------------------------------------------------

LATENCY_TARGET_MS = 200.0
RSS_TARGET_MB = 250.0
BULK_CHUNK = 2_000


class WorkerProcess:
    """``gateway worker`` as a subprocess on the bench's store, its log in a file; CPU and RSS from ``/proc``."""

    def __init__(self, database_url: str, log: Path) -> None:
        env = {
            **os.environ,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_ENDPOINT_ALLOWLIST": '["127.0.0.1"]',
            "GATEWAY_LOG_LEVEL": os.environ.get(
                "BENCH_WORKER_LOG_LEVEL", "WARNING"
            ),  # as the in-process runs: no line per delivery
        }
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *os.environ.get("BENCH_WORKER_ARGS", "-m gateway worker").split()],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"gateway worker exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Up:
    """A running gateway with its receiver subscribed (handshake done) and its worker running (in this
    process, or ``process``)."""

    runtime: Runtime
    receiver: AnyReceiver
    settings: Settings
    mllp_port: int
    sub_id: str
    worker_task: asyncio.Task[None] | None = None
    process: WorkerProcess | None = None

    async def stop_worker(self) -> None:
        if self.worker_task is not None:
            self.runtime.worker.stop()
            await self.worker_task
            self.worker_task = None

    def worker_cpu(self) -> float:
        """CPU seconds of the delivery worker's own process (0 when it runs in this one)."""
        return self.process.cpu_seconds() if self.process is not None else 0.0


@asynccontextmanager
async def gateway_up(
    database_url: str, *, max_count: int = 1, worker_process: bool = False, receiver_process: bool = False
) -> AsyncIterator[Up]:
    """The gateway (worker here or in ``gateway worker``) and its subscribed receiver (here, or in its own
    process: ``bench/receiver.py``)."""
    settings = Settings(
        database_url=database_url,
        http_port=free_port(None),
        mllp_port=0,
        endpoint_allowlist=["127.0.0.1"],
        run_worker=False,  # the bench starts the worker itself (here, or as `gateway worker`)
    )
    runtime = Runtime.build(settings)
    heap.settle()  # as `gateway serve` does after start-up
    local = None if receiver_process else TimingReceiver()
    receiver: AnyReceiver = local or ReceiverProcess()
    receiver_port = local_port = free_port(None) if local else receiver.port  # type: ignore[union-attr]
    up: Up | None = None
    process: WorkerProcess | None = None
    try:
        if isinstance(receiver, ReceiverProcess):
            await receiver.started()
        async with (
            serving(local.app, local_port) if local else contextlib.nullcontext(),
            serving(create_app(runtime), settings.http_port),
        ):
            assert runtime.mllp is not None
            if worker_process:
                process = WorkerProcess(database_url, Path(tempfile.mkdtemp(prefix="bench-worker-")) / "worker.log")
                task = None
            else:
                task = asyncio.create_task(runtime.worker.run())
            sub_id = await subscribe(settings, receiver, receiver_port, max_count)
            up = Up(runtime, receiver, settings, runtime.mllp.port, sub_id, task, process)
            yield up
            await up.stop_worker()
    finally:
        if up is not None and up.worker_task is not None:
            runtime.worker.stop()
            up.worker_task.cancel()
        if process is not None:
            process.stop()
        if isinstance(receiver, ReceiverProcess):
            await receiver.close()
        runtime.close()


def rss_mb() -> float:
    """Resident set size now (``/proc``), MiB; 0 where there is no ``/proc``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def paced(
    port: int, messages: list[bytes], *, rate: float, connections: int, sent: list[float], acked: list[float]
) -> None:
    """Message k leaves at ``t0 + k / rate`` on connection ``k % connections`` (or as soon as that
    connection has its previous ACK); its send and ACK times go to ``sent[k]`` and ``acked[k]``."""
    t0 = time.perf_counter() + 0.05

    async def lane(lane_no: int) -> None:
        async with MLLPClient("127.0.0.1", port, timeout=60) as client:
            for k in range(lane_no, len(messages), connections):
                await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
                sent[k] = time.perf_counter()
                ack = await client.send(messages[k])
                acked[k] = time.perf_counter()
                if b"MSA|AA|" not in ack:
                    raise SystemExit(f"message not accepted: {ack.decode('latin-1')!r}")

    await asyncio.gather(*(lane(n) for n in range(connections)))


def focus_to_message(up: Up, run_tag: str) -> dict[str, int]:
    """``Encounter/<id>`` → k of the admission that created it (PV1-19 is ``5<run><k>``)."""
    prefix = f"5{run_tag}"
    found: dict[str, int] = {}
    with up.runtime.db.connect() as conn:
        store = ResourceRepo(conn)
        for ref in up.receiver.by_focus:
            rtype, _, rid = ref.partition("/")
            stored = store.get(rtype, rid)
            for ident in stored.content.get("identifier", []) if stored else []:
                value = str(ident.get("value", ""))
                if value.startswith(prefix):
                    found[ref] = int(value[len(prefix) :])
    return found


async def sampler(up: Up, acked: list[float], out: list[tuple[float, int, int, float]], *, every: float) -> None:
    """(seconds since start, ACKed, received, RSS) every ``every`` seconds, until cancelled."""
    start = time.perf_counter()
    while True:
        await asyncio.sleep(every)
        done = sum(1 for a in acked if a)
        out.append((time.perf_counter() - start, done, await up.receiver.count(), rss_mb()))


async def sustained(
    database_url: str,
    *,
    rate: float,
    seconds: float,
    connections: int,
    worker_process: bool = False,
    receiver_process: bool = True,
) -> int:
    """ADT in at a paced ``rate`` for ``seconds`` over ``connections`` MLLP connections; each notification
    timed from the send of the message that caused it; the backlog (ACKed, not yet received) over time.
    The receiver runs in a process of its own unless ``receiver_process`` is False (``--receiver-in-process``)."""
    run_tag = f"{secrets.randbelow(10_000):04d}"
    n = max(1, round(rate * seconds))
    messages = [admission(run_tag, k) for k in range(n)]
    sent, acked = [0.0] * n, [0.0] * n
    samples: list[tuple[float, int, int, float]] = []
    async with gateway_up(database_url, worker_process=worker_process, receiver_process=receiver_process) as up:
        up.receiver.expect(n)
        cpu0, wall0, worker_cpu0 = cpu_seconds(), time.perf_counter(), up.worker_cpu()
        watch = asyncio.create_task(sampler(up, acked, samples, every=1.0))
        await paced(up.mllp_port, messages, rate=rate, connections=connections, sent=sent, acked=acked)
        ingest_wall = time.perf_counter() - wall0
        backlog_at_end = n - await up.receiver.count()
        async with asyncio.timeout(WAIT + seconds * 10):
            await up.receiver.wait_all()
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        worker_cpu = up.worker_cpu() - worker_cpu0
        watch.cancel()
        owner = focus_to_message(up, run_tag)
    latencies = [arrived - sent[owner[ref]] for ref, arrived in up.receiver.by_focus.items() if ref in owner]
    ack_lat = [a - s for s, a in zip(sent, acked, strict=True)]
    p99 = percentile(latencies, 0.99) * 1000
    backend = database_url.split(":", 1)[0]
    where = "in a `gateway worker` process" if worker_process else "in the gateway's process"
    platform = "in its own process" if receiver_process else "in the gateway's process"
    print(
        f"delivery, sustained: {backend}, {rate:g} msg/s paced for {seconds:g} s over {connections} MLLP "
        f"connections, delivery {where}, receiver {platform}"
    )
    print(f"  {n} admissions, ingest {n / ingest_wall:.0f} msg/s achieved (asked {rate:g})")
    ack_p50, ack_p99 = percentile(ack_lat, 0.5) * 1000, percentile(ack_lat, 0.99) * 1000
    print(f"  ACK latency          p50 {ack_p50:.1f} ms, p99 {ack_p99:.1f} ms")
    print(
        f"  ADT → notification   p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {p99:.1f} ms "
        f"(target p99 ≤ {LATENCY_TARGET_MS:.0f} ms: {'met' if p99 <= LATENCY_TARGET_MS else 'NOT met'}); "
        f"{len(latencies)} of {n} tied to their message"
    )
    print(
        f"  CPU                  {cpu:.1f} s in {wall:.1f} s wall ({cpu / n * 1000:.2f} ms per message, "
        f"sender + gateway{'' if receiver_process else ' + receiver'}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    if worker_process:
        print(
            f"  worker process CPU   {worker_cpu:.1f} s ({worker_cpu / n * 1000:.2f} ms per notification; "
            f"the line above is then without delivery)"
        )
    print(
        f"  backlog              0 at the start, {backlog_at_end} when the feed ended "
        f"({ingest_wall:.1f} s), all received {wall - ingest_wall:.1f} s later"
    )
    print("  backlog over time (ACKed but not yet received by the platform):")
    for t, done, received, rss in samples[:: max(1, len(samples) // 12)]:
        backlog = done - received
        print(f"    t={t:5.0f} s  ACKed {done:6d}  received {received:6d}  backlog {backlog:5d}  RSS {rss:.0f} MiB")
    print(f"  backlog trend        {_trend(samples)}")
    return _verdict(up.receiver, n)


def _trend(samples: list[tuple[float, int, int, float]]) -> str:
    """Backlog growth over the run's middle (warm-up and drain left out): events per second, by least squares."""
    middle = samples[len(samples) // 6 : max(len(samples) // 6 + 2, len(samples) * 5 // 6)]
    if len(middle) < 2:
        return "too short to tell"
    xs, ys = [t for t, *_ in middle], [done - received for _, done, received, _ in middle]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs) or 1.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    verdict = "flat" if abs(slope) < 1.0 else ("GROWING" if slope > 0 else "shrinking")
    return f"{slope:+.1f} events/s over the middle of the run, mean backlog {mean_y:.0f}: {verdict}"


def _verdict(receiver: AnyReceiver, n: int) -> int:
    problems = []
    if sorted(receiver.order) != list(range(1, n + 1)) or receiver.order != sorted(receiver.order):
        problems.append("events lost or out of order")
    if receiver.duplicates:
        problems.append(f"{receiver.duplicates} duplicate event(s)")
    if receiver.unsigned:
        problems.append(f"{receiver.unsigned} request(s) with a bad signature")
    if problems:
        print("ERROR: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("  every event received once, in order, signed")
    return 0


async def backlog_memory(
    database_url: str, *, events: int, max_count: int, seconds: float, worker_process: bool = False
) -> int:
    """RSS while a worker works through ``events`` queued notifications (written in bulk) for ``seconds``
    (or to the end, if sooner): what the worker holds must not grow with the backlog."""
    run_tag = f"{secrets.randbelow(10_000):04d}"
    async with gateway_up(database_url, max_count=max_count, worker_process=worker_process) as up:
        up.receiver.expect(1)
        await send(up.mllp_port, [admission(run_tag, 0)])  # one real stay: the backlog's focus
        async with asyncio.timeout(WAIT):
            await up.receiver.wait_all()
        await up.stop_worker()
        if up.process is not None:
            # The worker process keeps running: the backlog becomes visible to it at once, when the bulk
            # write commits, and the drain is timed from there.
            return await _drain_in_process(up, events=events, seconds=seconds, max_count=max_count)
        t_build = time.perf_counter()
        with transaction(up.runtime.db) as conn:
            outbox = OutboxRepo(conn)
            (real,) = outbox.for_subscription(up.sub_id, statuses=["delivered"])[-1:]
            _queue_copies(outbox, real, events)
        build = time.perf_counter() - t_build
        up.receiver.expect(events + 1)
        before = rss_mb()
        drainer = DeliveryWorker(db=up.runtime.db, settings=up.settings)
        samples: list[float] = []
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        task = asyncio.create_task(drainer.run())

        async def watch() -> None:
            while True:
                samples.append(rss_mb())
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await up.receiver.wait_all()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        watcher.cancel()
        drainer.stop()
        await task
        await drainer.client.aclose()
    delivered = len(up.receiver.arrived) - 1
    peak = max(samples, default=before)
    backend = database_url.split(":", 1)[0]
    print(f"delivery, backlog memory: {backend}, {events} events queued in bulk ({build:.1f} s), maxCount={max_count}")
    print(
        f"  RSS before the drain  {before:.0f} MiB; peak while draining {peak:.0f} MiB "
        f"(target ≤ {RSS_TARGET_MB:.0f} MiB: {'met' if peak <= RSS_TARGET_MB else 'NOT met'}); "
        f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    print(
        f"  drained {delivered} of {events} in {wall:.1f} s ({delivered / wall:.0f} events/s), "
        f"CPU {cpu:.1f} s ({cpu / max(1, delivered) * 1000:.2f} ms per event)"
    )
    return _verdict(up.receiver, delivered + 1)


def _queue_copies(outbox: OutboxRepo, real: OutboxRecord, events: int) -> None:
    """``events`` copies of the real event ``real``, numbered from 2 on, written in chunks (the bench's own
    lists stay small)."""
    focus = (real.focus_type or "", real.focus_id or "", real.focus_version or 1)
    for start in range(2, events + 2, BULK_CHUNK):
        outbox.add_many(
            subscription_id=real.subscription_id,
            topic=real.topic,
            focus=focus,
            context=real.context,
            occurred_at=real.occurred_at,
            event_numbers=range(start, min(start + BULK_CHUNK, events + 2)),
        )


async def _drain_in_process(up: Up, *, events: int, seconds: float, max_count: int) -> int:
    """``--backlog`` with ``--worker-process``: the bulk write commits under a running `gateway worker`."""
    assert up.process is not None
    up.receiver.expect(events + 1)
    with transaction(up.runtime.db) as conn:
        outbox = OutboxRepo(conn)
        # The event, delivered or not yet recorded so by the other process (it is received already).
        (real,) = [r for r in outbox.for_subscription(up.sub_id) if r.notification_type == "event-notification"]
        t_build = time.perf_counter()
        _queue_copies(outbox, real, events)
        before = up.process.rss_mb()
        cpu0 = up.worker_cpu()
    t0 = time.perf_counter()
    build = t0 - t_build
    up.runtime.worker.wake()  # the announcement a real ingest sends (PostgreSQL); SQLite: the poll
    samples: list[float] = []

    async def watch() -> None:
        while True:
            samples.append(up.process.rss_mb() if up.process else 0.0)
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await up.receiver.wait_all()
    wall, cpu = time.perf_counter() - t0, up.worker_cpu() - cpu0
    watcher.cancel()
    up.process.check()
    delivered = len(up.receiver.arrived) - 1
    peak = max(samples, default=before)
    backend = str(up.runtime.db.url).split(":", 1)[0]
    print(
        f"delivery, backlog memory: {backend}, {events} events queued in bulk ({build:.1f} s), "
        f"maxCount={max_count}, drained by a `gateway worker` process"
    )
    print(
        f"  worker RSS before the drain {before:.0f} MiB; peak while draining {peak:.0f} MiB "
        f"(target ≤ {RSS_TARGET_MB:.0f} MiB: {'met' if peak <= RSS_TARGET_MB else 'NOT met'})"
    )
    print(
        f"  drained {delivered} of {events} in {wall:.1f} s ({delivered / wall:.0f} events/s), "
        f"worker CPU {cpu:.1f} s ({cpu / max(1, delivered) * 1000:.2f} ms per event)"
    )
    return _verdict(up.receiver, delivered + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=500, help="admissions per phase")
    parser.add_argument("--max-count", type=int, default=1, help="events per notification (backport-max-count)")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--rate", type=float, default=0.0, help="live phase: messages/s (0 = as fast as acked)")
    parser.add_argument("--sustain", type=float, default=0.0, help="seconds of paced load at --rate (needs --rate)")
    parser.add_argument("--connections", type=int, default=4, help="MLLP connections of the sustained run")
    parser.add_argument("--backlog", type=int, default=0, help="events queued in bulk, then drained: RSS")
    parser.add_argument("--drain-seconds", type=float, default=60.0, help="--backlog: how long to drain at most")
    parser.add_argument(
        "--worker-process",
        action="store_true",
        help="--sustain / --backlog: deliver from a `gateway worker` subprocess (ingest stays here)",
    )
    parser.add_argument(
        "--receiver-in-process",
        action="store_true",
        help="--sustain: the receiver in the bench's process (as before), not in a process of its own",
    )
    args = parser.parse_args()
    if args.messages < 1 or not 1 <= args.max_count <= 1000:
        parser.error("--messages must be positive and --max-count within 1..1000")
    if args.sustain and args.rate <= 0:
        parser.error("--sustain needs --rate")

    def chosen(url: str) -> Coroutine[Any, Any, int]:
        if args.sustain:
            return sustained(
                url,
                rate=args.rate,
                seconds=args.sustain,
                connections=args.connections,
                worker_process=args.worker_process,
                receiver_process=not args.receiver_in_process,
            )
        if args.backlog:
            return backlog_memory(
                url,
                events=args.backlog,
                max_count=args.max_count,
                seconds=args.drain_seconds,
                worker_process=args.worker_process,
            )
        return run(args.messages, args.max_count, url, args.rate)

    if args.database_url:
        return asyncio.run(chosen(args.database_url))
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        return asyncio.run(chosen(f"sqlite:///{Path(tmp) / 'gateway.db'}"))


if __name__ == "__main__":
    sys.exit(main())
