"""Group commit in process: ``Pipeline.ingest_groups`` over distinct stays, a group of ``--group`` messages a
transaction (the writer thread's groups under MLLP are whatever arrived meanwhile: a few to 64).

The sequential bench's messages (the A01/A03 of ``mllp_ingest.py``), the first 40 as a warm-up, the rest in
groups; prints wall and CPU time per message. ``bench/groups.sh`` runs it under callgrind for the steady
figure (instructions a message).

    .venv/bin/python bench/groups.py [--messages 400] [--group 20] [--database-url URL]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from mllp_ingest import stay

from gateway import heap
from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.mapping.engine import Engine
from gateway.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 40


def run(n_messages: int, group: int, database_url: str) -> None:
    db = make_engine(Settings(database_url=database_url))
    migrate(db)
    pipeline = Pipeline(engine=Engine.from_directory(ROOT / "mappings"), db=db)
    heap.settle()  # as `gateway serve` does after start-up
    tag = f"{secrets.randbelow(10_000):04d}"
    messages = [m for k in range(max(n_messages, WARM_UP + 2) // 2) for m in stay(tag, k)]
    for outcomes in pipeline.ingest_groups(messages[:WARM_UP], transport="bench", size=group):
        assert all(o.code == "AA" for o in outcomes)
    rest = messages[WARM_UP:]
    started, cpu = time.perf_counter(), time.process_time()
    for outcomes in pipeline.ingest_groups(rest, transport="bench", size=group):
        for outcome in outcomes:
            assert outcome.code == "AA", outcome.ack_text
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    db.dispose()
    print(f"groups: {db.dialect.name}, {len(rest)} messages in groups of {group}")
    print(f"  wall  {wall / len(rest) * 1000:.2f} ms/message ({len(rest) / wall:.0f} messages/s)")
    print(f"  CPU   {cpu / len(rest) * 1000:.2f} ms/message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--group", type=int, default=20)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    if args.database_url:
        run(args.messages, args.group, args.database_url)
        return
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        run(args.messages, args.group, f"sqlite:///{Path(tmp) / 'gateway.db'}")


if __name__ == "__main__":
    main()
