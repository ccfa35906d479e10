"""Sequential in-process ingest: SQL statements per message kind, wall and CPU time per message.

No MLLP, no threads: ``Pipeline.ingest`` called in a loop on distinct stays (the A01/A03 of
``mllp_ingest.py``). CPU time per message is the steadier figure on a shared machine; wall time adds the
commits' fsync and whatever else runs. ``--profile`` prints the top of a cProfile, by own time
(``SORT=cumulative TOP=70`` for another view).

    .venv/bin/python bench/sequential.py [--messages 400] [--database-url URL] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from mllp_ingest import stay
from sqlalchemy import event

from gateway import heap
from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.mapping.engine import Engine
from gateway.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 20


def run(n_messages: int, database_url: str, *, profile: bool) -> None:
    db = make_engine(Settings(database_url=database_url))
    migrate(db)
    pipeline = Pipeline(engine=Engine.from_directory(ROOT / "mappings"), db=db)
    heap.settle()  # as `gateway serve` does after start-up
    tag = f"{secrets.randbelow(10_000):04d}"
    messages = [m for k in range(max(n_messages, 2 * WARM_UP + 2) // 2) for m in stay(tag, k)]
    counts: collections.Counter[str] = collections.Counter()
    kind = ["warm-up"]

    @event.listens_for(db, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        counts[kind[0]] += 1

    for i, message in enumerate(messages[: 2 * WARM_UP]):
        kind[0] = "warm-up" if i < WARM_UP else ("A01" if i % 2 == 0 else "A03")
        pipeline.ingest(message, transport="bench")
    per_kind = {k: counts[k] / (WARM_UP / 2) for k in ("A01", "A03")}
    event.remove(db, "before_cursor_execute", count)  # a listener costs each statement: not in the timed part
    rest = messages[2 * WARM_UP :]
    profiler = cProfile.Profile() if profile else None
    started, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for message in rest:
        outcome = pipeline.ingest(message, transport="bench")
        assert outcome.code == "AA", outcome.ack_text
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    db.dispose()
    print(f"sequential: {db.dialect.name}, {len(rest)} messages")
    print("  statements/message " + ", ".join(f"{k} {v:.0f}" for k, v in per_kind.items()) + " (BEGIN included)")
    print(f"  wall  {wall / len(rest) * 1000:.2f} ms/message ({len(rest) / wall:.0f} messages/s)")
    print(f"  CPU   {cpu / len(rest) * 1000:.2f} ms/message")
    if profiler:
        order, top = os.environ.get("SORT", "tottime"), int(os.environ.get("TOP", "25"))  # e.g. SORT=cumulative
        pstats.Stats(profiler).sort_stats(order).print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.database_url:
        run(args.messages, args.database_url, profile=args.profile)
        return
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        run(args.messages, f"sqlite:///{Path(tmp) / 'gateway.db'}", profile=args.profile)


if __name__ == "__main__":
    main()
