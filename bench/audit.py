"""The cost of #13 on ingest and delivery: sender binding on the hot path, and audit records written.

Runs the pipeline in-process (no sockets, so the difference is not lost in I/O noise) on a temporary
SQLite file with the default durability, three ways, on fresh stores:

``local`` (no client registered: nothing checked) and ``bound`` (a sender registered, every message
checked against its facilities), alternated ``--repeat`` times, best kept. Ingest itself writes no
audit record (no client reads anything); records are written when a notification is delivered (inside
the delivery transaction) and when a request reads patient data (one transaction per request). Their
cost is measured per record, inside an existing transaction and in a transaction of its own, and put
against the time of one ingest.

    .venv/bin/python bench/audit.py [--messages 600] [--repeat 3] [--database-url URL]

Never fails on the figures.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mllp_ingest import stay

from gateway.auth.clients import add_client
from gateway.config import Settings
from gateway.db.access import AuditRecord, AuditRepo
from gateway.db.engine import transaction
from gateway.runtime import Runtime


def _facility(message: bytes) -> str:
    return message.split(b"\r", 1)[0].split(b"|")[3].decode()


def _record() -> AuditRecord:
    return AuditRecord(
        recorded_at=datetime.now(UTC),
        client_id="bench",
        client_name="bench",
        action="R",
        subtype="notify",
        entity="Encounter/x",
        patient="p",
        outcome="0",
    )


def ingest_rate(mode: str, *, messages: int, database_url: str | None) -> float:
    """Messages/s through ``pipeline.ingest``, with (``bound``) or without (``local``) sender binding."""
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime.build(Settings(database_url=database_url or f"sqlite:///{tmp}/bench.db", run_worker=False))
        batch = [m for k in range(messages // 2) for m in stay(secrets.token_hex(2), k)]
        facilities = None
        if mode == "bound":
            facility = _facility(batch[0])
            with transaction(runtime.db) as conn:
                add_client(conn, kind="sender", name="bench", facilities=[facility], now=datetime.now(UTC))
            facilities = frozenset([facility])
        start = time.perf_counter()
        for message in batch:
            outcome = runtime.pipeline.ingest(message, transport="bench", facilities=facilities)
            if outcome.code != "AA":
                raise SystemExit(f"{mode}: {outcome.code} {outcome.ack_text!r}")
        elapsed = time.perf_counter() - start
        runtime.close()
    return len(batch) / elapsed


def audit_costs(*, records: int, database_url: str | None) -> tuple[float, float]:
    """Seconds per audit record: inside an existing transaction (a notification's record rides in the
    delivery's), and in a transaction of its own (a read request's flush)."""
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime.build(Settings(database_url=database_url or f"sqlite:///{tmp}/bench.db", run_worker=False))
        start = time.perf_counter()
        with transaction(runtime.db) as conn:
            for _ in range(records):
                AuditRepo(conn).add([_record()])
        inside = (time.perf_counter() - start) / records
        start = time.perf_counter()
        for _ in range(records):
            with transaction(runtime.db) as conn:
                AuditRepo(conn).add([_record()])
        alone = (time.perf_counter() - start) / records
        runtime.close()
    return inside, alone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3, help="alternate the modes this many times; keep the best")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    best = {"local": 0.0, "bound": 0.0}
    for _ in range(args.repeat):
        for mode in ("local", "bound"):
            rate = ingest_rate(mode, messages=args.messages, database_url=args.database_url)
            best[mode] = max(best[mode], rate)
    per_message = 1 / best["bound"]
    inside, alone = audit_costs(records=args.messages, database_url=args.database_url)
    print(f"ingest, no client (local)       {best['local']:7.1f} messages/s")
    print(
        f"ingest, sender binding (bound)  {best['bound']:7.1f} messages/s  "
        f"({(1 - best['bound'] / best['local']) * 100:+.1f} %)"
    )
    print(
        f"audit record in a transaction   {inside * 1000:7.3f} ms  ({inside / per_message * 100:.1f} % of one ingest)"
    )
    print(f"audit record, own transaction   {alone * 1000:7.3f} ms  ({alone / per_message * 100:.1f} % of one ingest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
