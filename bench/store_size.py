"""What takes the bytes: store size per message and per patient, per table and index.

``Pipeline.ingest`` of N messages (the distinct A01/A03 stays of ``mllp_ingest.py``: one new patient per
stay, so N/2 patients) into a temporary SQLite file, then the pages each table and index holds
(``dbstat``, after a WAL checkpoint), per message received, and the rows per message. With
``--database-url`` (an empty, throw-away PostgreSQL database), the growth of each table and index
(``pg_relation_size``, heap and TOAST together) and of the whole database; then, per table, its heap,
TOAST, free-space and visibility maps and indexes apart, with the bytes each row takes in the heap and in
each index (a row's header and line pointer included), and what grew outside the tables (the catalog).

    .venv/bin/python bench/store_size.py [--messages 400] [--database-url URL]
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import tempfile
from pathlib import Path

from mllp_ingest import stay
from sqlalchemy import Engine, text

from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("messages", "facts", "resources", "resource_versions", "search_index")
#: the issue's target (#14): bytes per message received, everything included
TARGET = 10_000


def ingest(db: Engine, n_messages: int) -> int:
    migrate(db)
    pipeline = Pipeline(engine=MappingEngine.from_directory(ROOT / "mappings"), db=db)
    tag = f"{secrets.randbelow(10_000):04d}"  # a re-run on the same database does not hit duplicates
    messages = [m for k in range(n_messages // 2) for m in stay(tag, k)]
    for message in messages:
        assert pipeline.ingest(message, transport="bench").code == "AA"
    return len(messages)


def summary(store: str, n: int, total: float) -> None:
    print(
        f"store_size: {store}, {n} messages ({n // 2} patients): {total / n:,.0f} bytes per message "
        f"({total / n / 1024:.1f} KiB; target <= {TARGET:,}), {2 * total / n / 1024:.1f} KiB per patient"
    )


def run_sqlite(n_messages: int, path: Path) -> None:
    db = make_engine(Settings(database_url=f"sqlite:///{path}"))
    n = ingest(db, n_messages)
    db.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    summary("sqlite (file)", n, path.stat().st_size)
    for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
        if size / n >= 100:
            print(f"  {name:38s} {size / n / 1024:6.2f} KiB/message")
    for table in TABLES:
        (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        print(f"  {table:38s} {count / n:6.2f} rows/message")
    conn.close()


_PG_SIZES = text(
    "SELECT c.relname, pg_relation_size(c.oid) + coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')"
)


def _pg_sizes(db: Engine) -> tuple[int, dict[str, int]]:
    with db.connect() as conn:
        total = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        return total, {str(name): int(size) for name, size in conn.execute(_PG_SIZES)}


#: per relation of the schema: its table (itself for a table), heap (main fork), maps (fsm, vm), TOAST
_PG_PARTS = text(
    "SELECT c.relname, coalesce(t.relname, c.relname), pg_relation_size(c.oid, 'main'),"
    " pg_relation_size(c.oid, 'fsm') + pg_relation_size(c.oid, 'vm'),"
    " coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_index i ON i.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = i.indrelid"
    " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')"
)

Parts = dict[str, tuple[str, int, int, int]]


def _pg_parts(db: Engine) -> Parts:
    with db.connect() as conn:
        return {str(r[0]): (str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in conn.execute(_PG_PARTS)}


def _pg_breakdown(before: Parts, after: Parts, counts: dict[str, int], n: int, total: int) -> None:
    """Per table of ``TABLES``: heap, TOAST, maps and each index, per message and per row it holds."""
    grown: Parts = {}
    for name, (table, heap, maps, toast) in after.items():
        _, heap_before, maps_before, toast_before = before.get(name, (table, 0, 0, 0))
        grown[name] = (table, heap - heap_before, maps - maps_before, toast - toast_before)
    print("  per table (KiB/message; bytes per row):")
    for table in TABLES:
        _, heap, maps, toast = grown[table]
        rows = max(counts[table], 1)
        indexes = sorted((g[1], name) for name, g in grown.items() if g[0] == table and name != table)
        shown = ", ".join(f"{name} {size / n / 1024:.2f} ({size / rows:.0f} B)" for size, name in reversed(indexes))
        print(
            f"    {table:20s} heap {heap / n / 1024:.2f} ({heap / rows:.0f} B), TOAST {toast / n / 1024:.2f},"
            f" maps {maps / n / 1024:.2f}; {shown}"
        )
    outside = total - sum(sum(g[1:]) for g in grown.values())
    print(f"    {'outside the tables':20s} {outside / n / 1024:.2f} (the catalog, and the tables not listed)")


def run_postgres(n_messages: int, url: str) -> None:
    db = make_engine(Settings(database_url=url))
    migrate(db)
    total_before, before = _pg_sizes(db)
    parts_before = _pg_parts(db)
    n = ingest(db, n_messages)
    total_after, after = _pg_sizes(db)
    parts_after = _pg_parts(db)
    with db.connect() as conn:
        counts = {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}
    db.dispose()
    summary("postgresql (database growth)", n, total_after - total_before)
    grown = sorted(((size - before.get(name, 0), name) for name, size in after.items()), reverse=True)
    for size, name in grown:
        if size / n >= 100:
            print(f"  {name:38s} {size / n / 1024:6.2f} KiB/message")
    for table in TABLES:
        print(f"  {table:38s} {counts[table] / n:6.2f} rows/message")
    _pg_breakdown(parts_before, parts_after, counts, n, total_after - total_before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--database-url", default="", help="an empty, throw-away PostgreSQL database")
    args = parser.parse_args()
    if args.database_url:
        run_postgres(args.messages, args.database_url)
        return
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        run_sqlite(args.messages, Path(tmp) / "gateway.db")


if __name__ == "__main__":
    main()
