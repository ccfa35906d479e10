"""``gateway import`` throughput: a hospital's history in files, loaded in event order (issue 14's target:
≥ 2,000 messages/s).

Writes N messages (the A01/A03 stays of ``mllp_ingest.py``, distinct patients and visits) into F files in a
temporary folder, MSH-7 shuffled across files so that the import has to sort them, then runs ``gateway
import --quiet DIR`` as a subprocess on a fresh store (a temporary SQLite file, or the PostgreSQL database
given, which should be empty and throw-away) and prints its summary beside the figures read from the
subprocess: wall time, user and system CPU per message.

    .venv/bin/python bench/import_files.py [--messages 2000] [--files 10] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from mllp_ingest import stay

ROOT = Path(__file__).resolve().parent.parent
TARGET = 2000.0
YEAR_START = datetime(2025, 1, 1)
_MSH7 = re.compile(rb"^(MSH(?:\|[^|\r]*){5}\|)(\d{14})", re.MULTILINE)


def history(n_messages: int, n_files: int, folder: Path) -> int:
    """``n_messages`` messages over ``n_files`` files; each stay's A01 an hour before its A03, the stays
    spread over a year and dealt to the files at random. Returns how many were written."""
    tag = f"{secrets.randbelow(10_000):04d}"
    rng = random.Random(14)
    files: list[list[bytes]] = [[] for _ in range(n_files)]
    written = 0
    for k in range(max(1, n_messages // 2)):
        start = YEAR_START + timedelta(hours=rng.randrange(0, 365 * 24))
        for hours, message in enumerate(stay(tag, k)):
            stamp = (start + timedelta(hours=hours)).strftime("%Y%m%d%H%M%S").encode()
            files[rng.randrange(n_files)].append(_MSH7.sub(rb"\g<1>" + stamp, message, count=1))
            written += 1
    for index, messages in enumerate(files):
        (folder / f"history-{index:03d}.hl7").write_bytes(b"\n".join(m.replace(b"\r", b"\n") for m in messages))
    return written


def run(n_messages: int, n_files: int, database_url: str) -> int:
    with tempfile.TemporaryDirectory(prefix="gateway-import-") as tmp:
        folder = Path(tmp) / "history"
        folder.mkdir()
        total = history(n_messages, n_files, folder)
        env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_LOG_LEVEL": "WARNING"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "import", "--quiet", str(folder)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    summary = done.stdout.strip().splitlines()
    rate = re.search(r"\(([\d,]+) msg/s\)", done.stdout)
    reported = float(rate.group(1).replace(",", "")) if rate else 0.0
    backend = database_url.split(":", 1)[0]
    print(f"import: {backend}, {total} messages in {n_files} files, {os.cpu_count()} CPUs")
    for line in summary:
        print(f"  gateway: {line}")
    print(
        f"  import rate     {reported:,.0f} msg/s as the summary counts it (target ≥ {TARGET:,.0f}: "
        f"{'met' if reported >= TARGET else 'NOT met'}); {total / wall:,.0f} msg/s over the whole command"
    )
    print(
        f"  CPU             {user:.1f} s user + {system:.1f} s system in {wall:.1f} s "
        f"({(user + system) / total * 1000:.2f} ms per message, start-up included)"
    )
    if done.returncode != 0:
        print(f"ERROR: gateway import exited {done.returncode}: {done.stderr[-2000:]}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    if args.messages < 2 or args.files < 1:
        parser.error("--messages must be at least 2 and --files at least 1")
    if args.database_url:
        return run(args.messages, args.files, args.database_url)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        return run(args.messages, args.files, f"sqlite:///{Path(tmp) / 'gateway.db'}")


if __name__ == "__main__":
    sys.exit(main())
