"""Long fuzz runs: mutated fixtures through the pipeline in-process, then over HTTP and MLLP to a real server.

    .venv/bin/python bench/fuzz.py                                   # 1,000,000 in-process, 20,000 HTTP, 20,000 MLLP
    .venv/bin/python bench/fuzz.py --inputs 20000 --http 2000 --mllp 2000 --seed 7

In-process, every input goes through the pure part of the ingest (parse, header and key checks, map,
ACK built from the outcome) and one in ``--store-every`` through the whole ``Pipeline.ingest`` with
storage, on a temporary SQLite store replaced every ``--store-size`` messages (so a run measures the
gateway, not a store growing without end). Over the network, a ``gateway serve`` subprocess on a
temporary store gets the mutated messages on ``--connections`` HTTP and MLLP connections each.

Counted, and printed with the figures:

- escapes: an exception out of ``Pipeline.ingest`` or out of the pure steps other than a ``GatewayError``
  (each is printed with its seed and mutators, to reproduce it);
- bad ACKs: an answer without MSH/MSA, a code other than AA/AE/AR, or AE/AR without ERR;
- HTTP 5xx (and any status other than 200, 400, 413), MLLP frames left unanswered;
- memory: RSS of this process (in-process) and of the server (network), first and last sample after
  warm-up and the highest.

Exit status 1 when any of the counts is not zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import DEFAULT_MAX_MESSAGE_BYTES, Settings  # noqa: E402
from gateway.db.engine import make_engine, migrate  # noqa: E402
from gateway.hl7.mllp import FrameDecoder, frame  # noqa: E402
from gateway.mapping.engine import Engine  # noqa: E402
from gateway.pipeline import Pipeline  # noqa: E402
from tests.fuzzing import ack_code, ack_problem, distinct_keys, load_seeds, mutate, pure_step  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib(pid: int | None = None) -> float:
    """Current (not peak) resident memory of a process, from /proc."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1_048_576


@dataclass
class Tally:
    """Counts for one phase; ``problems`` keeps the first few failures with what reproduces them."""

    name: str
    inputs: int = 0
    escapes: int = 0
    bad_acks: int = 0
    failures: int = 0  # 5xx / unexpected status (HTTP), unanswered frames (MLLP)
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def ok(self) -> bool:
        return self.escapes == self.bad_acks == self.failures == 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        mem = ""
        if len(self.memory) >= 2:
            warm = self.memory[min(1, len(self.memory) - 1)]
            mem = f", RSS MiB after warm-up {warm:.0f} → last {self.memory[-1]:.0f} (max {max(self.memory):.0f})"
        return (
            f"{self.name}: {self.inputs} inputs in {elapsed:.0f} s ({self.inputs / max(elapsed, 1e-9):.0f}/s), "
            f"escapes {self.escapes}, bad ACKs {self.bad_acks}, failures {self.failures}{mem}; "
            f"outcomes {dict(sorted(self.outcomes.items()))}"
        )


def inputs(seed: int, count: int, *, distinct: bool) -> Iterator[tuple[int, bytes, list[str]]]:
    """(input seed, bytes, mutators): each input is reproducible from its own seed."""
    seeds = load_seeds()
    master = random.Random(seed)
    for _ in range(count):
        own = master.getrandbits(48)
        rng = random.Random(own)
        base = rng.choice(seeds)
        if distinct and rng.random() < 0.9:
            base = distinct_keys(base, f"F{own:x}")
        data, names = mutate(base, rng)
        yield own, data, names


class Store:
    """A throw-away SQLite store for the stored fraction, replaced every ``size`` messages."""

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine, self.size, self.used = engine, size, 0
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-fuzz-"))
        self.generation = 0
        self.pipeline = self._new()

    def _new(self) -> Pipeline:
        self.generation += 1
        url = f"sqlite:///{self.dir / f'store{self.generation}.db'}"
        self.db = make_engine(Settings(database_url=url, sqlite_synchronous="OFF"))
        migrate(self.db)
        return Pipeline(engine=self.engine, db=self.db)

    def get(self) -> Pipeline:
        if self.used >= self.size:
            self.db.dispose()
            for f in self.dir.glob(f"store{self.generation}.db*"):
                f.unlink()
            self.pipeline, self.used = self._new(), 0
        self.used += 1
        return self.pipeline

    def close(self) -> None:
        self.db.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)


def check_ack(tally: Tally, ack: bytes, where: str) -> None:
    problem = ack_problem(ack)
    if problem:
        tally.bad_acks += 1
        tally.problem(f"{where}: {problem}")


def run_in_process(args: argparse.Namespace) -> Tally:
    tally = Tally("in-process")
    engine = Engine.from_directory(ROOT / "mappings")
    store = Store(engine, args.store_size)
    stored = Tally("in-process, stored through Pipeline.ingest")
    try:
        for n, (own, raw, names) in enumerate(inputs(args.seed, args.inputs, distinct=True), start=1):
            tally.inputs += 1
            try:
                ack = pure_step(engine, raw)
                tally.outcomes[ack_code(ack)] += 1
                check_ack(tally, ack, f"seed {own} {names}")
            except Exception as exc:
                tally.escapes += 1
                tally.problem(f"seed {own} {names}: {_where(exc)}")
            if n % args.store_every == 0:
                stored.inputs += 1
                try:
                    outcome = store.get().ingest(raw, transport="fuzz")
                    stored.outcomes[f"{outcome.code} {outcome.status}"] += 1
                    if outcome.code == "AE" and "internal error" in outcome.ack_text:
                        stored.problem(f"seed {own} {names}: internal error caught by the catch-all")
                    check_ack(stored, outcome.ack, f"seed {own} {names}")
                except Exception as exc:
                    stored.escapes += 1
                    stored.problem(f"seed {own} {names}: {_where(exc)}")
            if n % args.report_every == 0:
                tally.memory.append(rss_mib())
                print(tally.line(), flush=True)
                print("  " + stored.line(), flush=True)
    finally:
        store.close()
    tally.memory.append(rss_mib())
    tally.escapes += stored.escapes
    tally.bad_acks += stored.bad_acks
    tally.problems += stored.problems
    print(stored.line())
    return tally


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 2)[-1]}:{last.lineno}" if last else type(exc).__name__


# -- over the network ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``gateway serve`` in a subprocess on a temporary SQLite store (default durability)."""

    def __init__(self, *, http_port: int, mllp_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-fuzz-serve-"))
        self.http_port, self.mllp_port = http_port, mllp_port
        env = {
            **os.environ,
            "GATEWAY_DATABASE_URL": f"sqlite:///{self.dir / 'gateway.db'}",
            "GATEWAY_SQLITE_SYNCHRONOUS": "NORMAL",
            "GATEWAY_HTTP_PORT": str(http_port),
            "GATEWAY_MLLP_PORT": str(mllp_port),
            "GATEWAY_MAX_MESSAGE_BYTES": str(DEFAULT_MAX_MESSAGE_BYTES),  # the limit the MLLP phase expects
        }
        gateway = Path(sys.executable).parent / "gateway"
        self.proc = subprocess.Popen(
            [str(gateway), "serve", "--http-port", str(http_port), "--mllp-port", str(mllp_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "server.log", "wb"),  # noqa: SIM115
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gateway serve exited with {self.proc.returncode}; see {self.dir}/server.log")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("gateway serve did not become ready")

    def rss(self) -> float:
        return rss_mib(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def http_phase(args: argparse.Namespace, server: Server) -> Tally:
    tally = Tally("HTTP POST /hl7v2")
    source = inputs(args.seed + 1, args.http, distinct=True)
    url = f"http://127.0.0.1:{server.http_port}/hl7v2"

    async def worker(client: httpx.AsyncClient) -> None:
        for own, raw, names in source:
            tally.inputs += 1
            try:
                response = await client.post(url, content=raw, headers={"Content-Type": "application/hl7-v2"})
            except httpx.HTTPError as exc:
                tally.failures += 1
                tally.problem(f"seed {own} {names}: {type(exc).__name__}")
                continue
            tally.outcomes[str(response.status_code)] += 1
            if response.status_code == 200:
                check_ack(tally, response.content, f"seed {own} {names}")
            elif response.status_code not in (400, 413):
                tally.failures += 1
                tally.problem(f"seed {own} {names}: HTTP {response.status_code}")
            if tally.inputs % args.report_every_network == 0:
                tally.memory.append(server.rss())
                print(tally.line(), flush=True)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.connections)))
    tally.memory.append(server.rss())
    return tally


async def mllp_phase(args: argparse.Namespace, server: Server) -> Tally:
    """Framing bytes inside a payload would make it several frames: they are dropped before framing."""
    tally = Tally("MLLP")
    source = inputs(args.seed + 2, args.mllp, distinct=True)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.mllp_port)
        decoder = FrameDecoder(max_message_bytes=16 * 1_048_576)
        try:
            for own, raw, names in source:
                tally.inputs += 1
                payload = raw.replace(b"\x0b", b"").replace(b"\x1c", b"")
                if reader.at_eof():
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.mllp_port)
                    decoder = FrameDecoder(max_message_bytes=16 * 1_048_576)
                writer.write(frame(payload))
                await writer.drain()
                ack = await _one_ack(reader, decoder)
                if ack is None:
                    tally.failures += 1
                    tally.problem(f"seed {own} {names}: frame unanswered")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.mllp_port)
                    decoder = FrameDecoder(max_message_bytes=16 * 1_048_576)
                    continue
                tally.outcomes[ack_code(ack)] += 1
                check_ack(tally, ack, f"seed {own} {names}")
                if len(payload) > DEFAULT_MAX_MESSAGE_BYTES:
                    # An oversize frame is answered AR and then the server closes the connection (the stream
                    # cannot be resynchronised), as a sender would see: reconnect before the next message,
                    # instead of racing the close (a frame written into it would count as unanswered).
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.mllp_port)
                    decoder = FrameDecoder(max_message_bytes=16 * 1_048_576)
                if tally.inputs % args.report_every_network == 0:
                    tally.memory.append(server.rss())
                    print(tally.line(), flush=True)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(args.connections)))
    tally.memory.append(server.rss())
    return tally


async def _one_ack(reader: asyncio.StreamReader, decoder: FrameDecoder) -> bytes | None:
    try:
        async with asyncio.timeout(60):
            while True:
                data = await reader.read(65_536)
                if not data:
                    return None
                acks = decoder.feed(data)
                if acks:
                    return acks[0]
    except (TimeoutError, ConnectionError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="in-process inputs")
    parser.add_argument("--store-every", type=int, default=50, help="one input in N also through storage")
    parser.add_argument("--store-size", type=int, default=2000, help="messages per throw-away store")
    parser.add_argument("--http", type=int, default=20_000, help="inputs over HTTP")
    parser.add_argument("--mllp", type=int, default=20_000, help="inputs over MLLP")
    parser.add_argument("--connections", type=int, default=4, help="concurrent HTTP and MLLP connections")
    parser.add_argument("--http-port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--mllp-port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--report-every", type=int, default=50_000)
    parser.add_argument("--report-every-network", type=int, default=2_000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the gateway logs every rejected input; the figures are what matter
    print(f"fuzz: seed {args.seed}, {args.inputs} in-process, {args.http} HTTP, {args.mllp} MLLP", flush=True)
    tallies = []
    if args.inputs:
        tallies.append(run_in_process(args))
        print(tallies[-1].line(), flush=True)
    if args.http or args.mllp:
        server = Server(http_port=args.http_port or free_port(), mllp_port=args.mllp_port or free_port())
        try:
            server.wait_ready()
            for phase, count in ((http_phase, args.http), (mllp_phase, args.mllp)):
                if count:
                    tallies.append(asyncio.run(phase(args, server)))
                    print(tallies[-1].line(), flush=True)
        finally:
            server.stop()
    print("\n== summary")
    for tally in tallies:
        print(tally.line())
        for problem in tally.problems:
            print("   ", problem)
    return 0 if all(t.ok() for t in tallies) else 1


if __name__ == "__main__":
    raise SystemExit(main())
