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

Sender, gateway and receiver share one process and event loop, so the figures include all three.
Exit status 1 when an event is lost, duplicated, out of order or badly signed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from fastapi import Request, Response

from gateway.api.app import create_app
from gateway.config import Settings
from gateway.demo import Receiver, _subscription, free_port, serving
from gateway.hl7.mllp import MLLPClient
from gateway.runtime import Runtime
from gateway.subscriptions.channels import SIGNATURE_HEADER, verify
from gateway.subscriptions.service import SIGNING_SECRET
from gateway.subscriptions.worker import DeliveryWorker

ROOT = Path(__file__).resolve().parent.parent
ADMISSION = (ROOT / "fixtures" / "demo" / "01_A01_admission.hl7").read_bytes()
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
WAIT = 120.0  # seconds: a bound on each phase, far above any sane figure


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


class TimingReceiver(Receiver):
    """Records when each event number first arrives, duplicates, order breaks and bad signatures."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[int, float] = {}
        self.order: list[int] = []
        self.requests = 0
        self.duplicates = 0
        self.unsigned = 0
        self.handshake = asyncio.Event()
        self.target = 0
        self.all_in = asyncio.Event()

    async def _notify(self, request: Request) -> Response:
        body = await request.body()
        now = time.perf_counter()
        bundle = orjson.loads(body)
        params = bundle["entry"][0]["resource"]["parameter"]
        sub_id = params[0]["valueReference"]["reference"].rsplit("/", 1)[-1]
        if not verify(body, self.secrets.get(sub_id, ""), request.headers.get(SIGNATURE_HEADER, "")):
            self.unsigned += 1
        kind = next(p["valueCode"] for p in params if p["name"] == "type")
        if kind == "handshake":
            self.handshake.set()
            return Response(status_code=200)
        self.requests += 1
        for event in (p for p in params if p["name"] == "notification-event"):
            number = int(next(part["valueString"] for part in event["part"] if part["name"] == "event-number"))
            if number in self.arrived:
                self.duplicates += 1
                continue
            self.arrived[number] = now
            self.order.append(number)
        if len(self.arrived) >= self.target:
            self.all_in.set()
        return Response(status_code=200)

    def expect(self, total: int) -> None:
        self.target = total
        self.all_in.clear()
        if len(self.arrived) >= total:
            self.all_in.set()


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
    receiver = TimingReceiver()
    receiver_port = free_port(None)
    worker_task: asyncio.Task[None] | None = None
    try:
        async with serving(receiver.app, receiver_port), serving(create_app(runtime), settings.http_port):
            assert runtime.mllp is not None
            mllp_port = runtime.mllp.port
            worker_task = asyncio.create_task(runtime.worker.run())

            sub_body = _subscription("encounter-start", f"http://127.0.0.1:{receiver_port}/notify", "id-only")
            del sub_body["_criteria"]  # every admission notifies
            sub_body["channel"]["extension"] = [
                {"url": f"{BACKPORT}/backport-max-count", "valuePositiveInt": max_count}
            ]
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(
                    f"http://127.0.0.1:{settings.http_port}/fhir/Subscription",
                    content=json.dumps(sub_body),
                    headers={"Content-Type": "application/fhir+json"},
                )
                answer.raise_for_status()
                created = answer.json()
            receiver.secrets[created["id"]] = next(
                e["valueString"] for e in created["channel"]["extension"] if e["url"] == SIGNING_SECRET
            )
            await asyncio.wait_for(receiver.handshake.wait(), timeout=WAIT)

            # -- live ------------------------------------------------------------------------------
            receiver.expect(n)
            t0 = time.perf_counter()
            sent_at = await send(mllp_port, [admission(run_tag, k) for k in range(n)], rate=rate)
            ingest_done = time.perf_counter()
            await asyncio.wait_for(receiver.all_in.wait(), timeout=WAIT)
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
            await asyncio.wait_for(receiver.all_in.wait(), timeout=WAIT)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=500, help="admissions per phase")
    parser.add_argument("--max-count", type=int, default=1, help="events per notification (backport-max-count)")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--rate", type=float, default=0.0, help="live phase: messages/s (0 = as fast as acked)")
    args = parser.parse_args()
    if args.messages < 1 or not 1 <= args.max_count <= 1000:
        parser.error("--messages must be positive and --max-count within 1..1000")
    if args.database_url:
        return asyncio.run(run(args.messages, args.max_count, args.database_url, args.rate))
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        return asyncio.run(run(args.messages, args.max_count, f"sqlite:///{Path(tmp) / 'gateway.db'}", args.rate))


if __name__ == "__main__":
    sys.exit(main())
