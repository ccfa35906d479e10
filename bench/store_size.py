"""What takes the bytes: SQLite store size per message, per table and index (``dbstat``), after a checkpoint.

``Pipeline.ingest`` of N messages (the distinct A01/A03 stays of ``mllp_ingest.py``) into a temporary
SQLite file, then the pages each table and index holds, per message received, and the rows per message.

    .venv/bin/python bench/store_size.py [--messages 400]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from mllp_ingest import stay

from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.mapping.engine import Engine
from gateway.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("messages", "facts", "resources", "resource_versions", "search_index")


def run(n_messages: int, path: Path) -> None:
    db = make_engine(Settings(database_url=f"sqlite:///{path}"))
    migrate(db)
    pipeline = Pipeline(engine=Engine.from_directory(ROOT / "mappings"), db=db)
    messages = [m for k in range(n_messages // 2) for m in stay("5150", k)]
    for message in messages:
        assert pipeline.ingest(message, transport="bench").code == "AA"
    db.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    n = len(messages)
    print(f"store_size: sqlite, {n} messages, {path.stat().st_size / n / 1024:.1f} KiB per message (file)")
    for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
        if size / n >= 100:
            print(f"  {name:38s} {size / n / 1024:6.2f} KiB/message")
    for table in TABLES:
        (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        print(f"  {table:38s} {count / n:6.2f} rows/message")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        run(args.messages, Path(tmp) / "gateway.db")


if __name__ == "__main__":
    main()
