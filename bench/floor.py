"""The storage's own speed: a minimal MLLP server that splits frames by hand and commits small JSON documents.

It does what any MLLP → database gateway must at least do per message (frame, read MSH-10 and PID-3,
store a document, commit durably, answer AA), with the same durability as the gateway (SQLite WAL with
``synchronous=FULL``; PostgreSQL's default commit), and nothing else: no parsing beyond the header, no
mapping, no state. Two modes:

- ``one``: one transaction and one commit per message (threads, one connection each);
- ``group``: one writer commits every message pending at once, then answers them all (group commit).

``mllp_ingest.py --floors`` runs both beside the gateway, on the same messages and sender, and prints the
gateway's ratio to each.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import psycopg
from sqlalchemy.engine import make_url

START, END = b"\x0b", b"\x1c\r"


class Store:
    """One DB-API connection per thread, on SQLite or PostgreSQL, with the gateway's durability."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.sqlite = url.get_backend_name() == "sqlite"
        self.target = url.database or "" if self.sqlite else url.set(drivername="postgresql").render_as_string(False)
        self._local = threading.local()
        with self._tx() as cur:
            cur.execute("DROP TABLE IF EXISTS floor_messages")
            key = "INTEGER PRIMARY KEY AUTOINCREMENT" if self.sqlite else "BIGSERIAL PRIMARY KEY"
            cur.execute(f"CREATE TABLE floor_messages (id {key}, control_id TEXT NOT NULL, doc TEXT NOT NULL)")

    def _connect(self) -> Any:
        if self.sqlite:
            conn = sqlite3.connect(self.target, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn
        return psycopg.connect(self.target)

    @contextlib.contextmanager
    def _tx(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        cur = conn.cursor()
        if self.sqlite:
            cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def insert(self, rows: list[tuple[str, str]]) -> None:
        """Store ``rows`` (control id, JSON document) in one transaction, one commit."""
        marker = "?" if self.sqlite else "%s"
        with self._tx() as cur:
            cur.executemany(f"INSERT INTO floor_messages (control_id, doc) VALUES ({marker}, {marker})", rows)


def document(message: bytes) -> tuple[bytes, tuple[str, str]]:
    """(MSH-10, (control id, small JSON document)) read by hand from the header and PID-3."""
    segments = message.split(b"\r")
    msh = segments[0].split(b"|")
    pid = next((s.split(b"|") for s in segments if s.startswith(b"PID|")), [])
    control = msh[9] if len(msh) > 9 else b""
    doc = {
        "sender": msh[2].decode("latin-1") if len(msh) > 2 else "",
        "type": msh[8].decode("latin-1") if len(msh) > 8 else "",
        "control_id": control.decode("latin-1"),
        "patient": pid[3].split(b"^")[0].decode("latin-1") if len(pid) > 3 else "",
        "bytes": len(message),
    }
    return control, (doc["control_id"], orjson.dumps(doc).decode())


def ack(control: bytes) -> bytes:
    return (
        START + b"MSH|^~\\&|FLOOR|FLOOR|||20260101000000||ACK|" + control + b"|P|2.5\rMSA|AA|" + control + b"\r" + END
    )


class GroupWriter:
    """Every message pending when the writer is free goes into its next commit."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[tuple[tuple[str, str], asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def put(self, row: tuple[str, str]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((row, future))
        self.wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            await asyncio.to_thread(self.store.insert, [row for row, _ in batch])
            for _, future in batch:
                future.set_result(None)


async def serve_frames(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Callable[[bytes], Awaitable[bytes]]
) -> None:
    """Split MLLP frames by hand and write ``answer(message)`` (a framed ACK) for each, in order."""
    buffer = b""
    try:
        while chunk := await reader.read(65536):
            buffer += chunk
            while (end := buffer.find(END)) >= 0:
                frame, buffer = buffer[:end], buffer[end + len(END) :]
                writer.write(await answer(frame[frame.find(START) + 1 :]))
                await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def floor_server(database_url: str, *, mode: str) -> AsyncIterator[int]:
    """Run the floor server on a free port; yields the port."""
    store = Store(database_url)
    group = GroupWriter(store) if mode == "group" else None

    async def answer(message: bytes) -> bytes:
        control, row = document(message)
        if group is not None:
            await group.put(row)
        else:
            await asyncio.to_thread(store.insert, [row])
        return ack(control)

    server = await asyncio.start_server(lambda r, w: serve_frames(r, w, answer), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        if group is not None:
            group.task.cancel()
