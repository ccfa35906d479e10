"""Per-message time on a store holding many patients (1M by default) against an empty one.

Building a million patients through the pipeline would take hours here, so the store is filled through a
bulk path: one stay (A01 + A03 of a new patient) is ingested by the real pipeline into a template store,
and its rows (message, facts, resources, the versions they replaced, search index; the shared doctor
once) are copied ``--patients`` times under new keys: every id, reference, IPP, visit and control id of
the template gets a per-copy suffix in the key columns, so the tables and their indexes have the sizes
and key spread of that many patients. The copies keep the template's bodies (no lookup reads another patient's body). On
PostgreSQL the bulk load ends with ANALYZE, as a bulk path of the gateway's would.

Then the same sequence of new stays is ingested by the pipeline into the full store and into an empty
one, alternately (``--rounds``), and CPU and wall time per message are printed with their ratio (the
issue's target: at most 20 % slower).

    .venv/bin/python bench/million.py [--patients 1000000] [--messages 200] [--rounds 2] [--database-url URL]

``--database-url`` names an empty throw-away PostgreSQL database for the full store (the empty store is a
second database created beside it, ``<name>_empty``); without it both are temporary SQLite files.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from mllp_ingest import stay
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from gateway.config import Settings
from gateway.db.engine import make_engine, migrate
from gateway.db.indexing import id_key, id_of, value_key, value_of
from gateway.db.schema import facts, messages, resource_versions, resources, search_index
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
#: copies per transaction of the bulk load
CHUNK = 5_000
#: table → the columns that carry a key of the stay (everything else is copied as it is)
KEYED = {
    messages: ("control_id",),
    facts: ("stream",),
    resources: ("id",),
    resource_versions: ("id",),
    search_index: ("id", "value"),
}


#: PostgreSQL's compact ``search_index`` columns (0009): read as text to be keyed, stored as bytes again
_COMPACT = {"id": (id_of, id_key), "value": (value_of, value_key)}


def _as_text(columns: list[str], row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_COMPACT[c][0](bytes(v)) if c in _COMPACT else v for c, v in zip(columns, row, strict=True))


def _as_stored(columns: list[str], row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_COMPACT[c][1](v) if c in _COMPACT else v for c, v in zip(columns, row, strict=True))


def _pipeline(db: Engine) -> Pipeline:
    return Pipeline(engine=MappingEngine.from_directory(ROOT / "mappings"), db=db)


def template(db: Engine) -> tuple[dict[str, tuple[list[str], list[tuple[Any, ...]]]], list[str]]:
    """One stay's rows as stored (table → columns, rows), ingested by the real pipeline, and the key
    strings that make them this stay's."""
    pipeline = _pipeline(db)
    for message in stay("0000", 0):
        assert pipeline.ingest(message, transport="bench").code == "AA"
    rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    with db.connect() as conn:
        shared = {r.id for r in conn.execute(select(resources.c.id).where(resources.c.type == "Practitioner"))}
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for table in KEYED:
            columns = [c.name for c in table.c if not (c.name == "id" and c.autoincrement is True)]
            cursor.execute(f"SELECT {', '.join(columns)} FROM {table.name}")
            found = [tuple(r) for r in cursor.fetchall()]
            if table is search_index and db.dialect.name == "postgresql":
                found = [_as_text(columns, r) for r in found]
            if table is not messages and table is not facts:
                found = [r for r in found if r[columns.index("id")] not in shared]
            rows[table.name] = (columns, found)
    tokens = {str(r[rows["resources"][0].index("id")]) for r in rows["resources"][1]}
    tokens |= {str(r[rows["messages"][0].index("control_id")]) for r in rows["messages"][1]}
    # the IPP, visit number and movement ids of the stay (mllp_ingest.stay, run "0000", k 0)
    tokens |= {"90000000000", "800000000000", "MVT-0000-0-1", "MVT-0000-0-2"}
    return rows, sorted(tokens, key=len, reverse=True)


def copies(
    columns: list[str],
    template_rows: list[tuple[Any, ...]],
    keyed: tuple[str, ...],
    tokens: list[str],
    start: int,
    stop: int,
) -> list[tuple[Any, ...]]:
    """The template's rows of one table for copies ``start``..``stop``, with every key suffixed ``~k``."""
    at = [columns.index(c) for c in keyed]
    shapes = []
    for row in template_rows:  # each keyed value as a format string, built once per table
        formats = {}
        for i in at:
            value = str(row[i]).replace("{", "{{").replace("}", "}}")
            for token in tokens:
                value = value.replace(token, token + "~{k}")
            formats[i] = value
        shapes.append((list(row), formats))
    out = []
    for k in range(start, stop):
        for row, formats in shapes:
            copy = row[:]
            for i, shape in formats.items():
                copy[i] = shape.format(k=k)
            out.append(tuple(copy))
    return out


def fill(db: Engine, patients: int) -> float:
    """Bulk-load ``patients`` copies of a stay on the driver's cursor (SQLite ``executemany``, PostgreSQL
    ``COPY``, ~6x faster there than inserts); returns the seconds it took."""
    started = time.perf_counter()
    rows, tokens = template(db)
    mark = "?" if db.dialect.name == "sqlite" else "%s"
    keyed = {table.name: columns for table, columns in KEYED.items()}
    raw = db.raw_connection()  # one driver connection for the whole load, outside the pool's transactions
    cursor = raw.cursor()
    sqlite = db.dialect.name == "sqlite"
    if sqlite:  # a bulk load is redone if the machine fails: no fsync per chunk (reset below)
        cursor.execute("PRAGMA synchronous=OFF")
    for start in range(1, patients, CHUNK):
        if sqlite:
            cursor.execute("BEGIN")  # the engine's connections run the driver in autocommit mode
        for name, (columns, template_rows) in rows.items():
            batch = copies(columns, template_rows, keyed[name], tokens, start, min(start + CHUNK, patients))
            if sqlite:
                statement = f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
                cursor.executemany(statement, batch)
                continue
            if name == search_index.name:
                batch = [_as_stored(columns, row) for row in batch]
            with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:  # PostgreSQL's bulk path
                for row in batch:
                    copy.write_row(row)
        raw.commit() if not sqlite else cursor.execute("COMMIT")
        print(f"  bulk: {min(start + CHUNK, patients):,} patients", flush=True)
    if sqlite:
        cursor.execute(f"PRAGMA synchronous={Settings().sqlite_synchronous}")
    raw.close()
    if db.dialect.name == "postgresql":  # SQLite is left as the gateway leaves it: never analysed
        with db.begin() as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


def per_message(db: Engine, tag: str, n_messages: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per message over ``n_messages`` new stays."""
    pipeline = _pipeline(db)
    batch = [m for k in range(n_messages // 2) for m in stay(tag, k)]
    for message in [m for k in range(10) for m in stay(tag + "w", k)]:  # warm the caches
        pipeline.ingest(message, transport="bench")
    wall, cpu = time.perf_counter(), time.process_time()
    for message in batch:
        assert pipeline.ingest(message, transport="bench").code == "AA"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return cpu / len(batch) * 1000, wall / len(batch) * 1000


def run(full_url: str, empty_url: str, *, patients: int, n_messages: int, rounds: int) -> None:
    full, empty = make_engine(Settings(database_url=full_url)), make_engine(Settings(database_url=empty_url))
    migrate(full)
    migrate(empty)
    print(f"million: {full.dialect.name}, {patients:,} patients (bulk), {n_messages} messages per measure")
    seconds = fill(full, patients)
    print(f"  bulk load {seconds:.0f} s ({patients / seconds:,.0f} patients/s)")
    figures: dict[str, list[tuple[float, float]]] = {"empty": [], "full": []}
    for r in range(rounds):
        for name, db in (("empty", empty), ("full", full)):
            figures[name].append(per_message(db, f"{r}{name[0]}", n_messages))
            cpu, wall = figures[name][-1]
            print(f"  round {r + 1} {name:5s} CPU {cpu:.2f} ms/message, wall {wall:.2f} ms/message")
    best = {name: (min(c for c, _ in f), min(w for _, w in f)) for name, f in figures.items()}
    print(
        f"  full / empty: CPU {best['full'][0] / best['empty'][0]:.2f}x, wall {best['full'][1] / best['empty'][1]:.2f}x"
        " (best of the rounds each)"
    )
    full.dispose()
    empty.dispose()


def _postgres_empty(url: str) -> str:
    """A second, empty database beside ``url`` (dropped and created again)."""
    parsed = make_url(url)
    name = f"{parsed.database}_empty"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database; default SQLite")
    args = parser.parse_args()
    options = {"patients": args.patients, "n_messages": args.messages, "rounds": args.rounds}
    if args.database_url:
        run(args.database_url, _postgres_empty(args.database_url), **options)
        return
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        run(f"sqlite:///{Path(tmp) / 'full.db'}", f"sqlite:///{Path(tmp) / 'empty.db'}", **options)


if __name__ == "__main__":
    main()
