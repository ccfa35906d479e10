"""Raw messages and ACKs are stored deflated (``messages.body``, 0006) and read back byte for byte, old rows
too (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select

from gateway.db import bodies
from gateway.db.engine import alembic_config
from gateway.db.repo import MessageRepo
from gateway.db.schema import messages
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import Pipeline
from tests.messages import Adt

NOW = datetime(2026, 3, 1, tzinfo=UTC)
HEADER = {"sending_application": "GAM", "sending_facility": "CH", "control_id": "C-1"}


@pytest.mark.parametrize(
    ("raw", "ack"),
    [
        (Adt().bytes(), "MSH|^~\\&|GATEWAY|X\rMSA|AA|MSG-1|\r"),
        (b"", None),
        (b"\x00\x0b\x1c\rnot HL7 at all \xff\xfe", "MSA|AR||\u00e9\u20ac\ud800"),  # junk in, lone surrogate out
        (b"MSH" + b"|x" * 200_000, ""),
    ],
)
def test_a_message_and_its_ack_read_back_exactly(raw: bytes, ack: str | None) -> None:
    body = bodies.packed_message(raw, ack)
    assert body[0] == bodies.MESSAGES
    assert bodies.unpacked_message(body) == (raw, ack)


def test_messages_are_stored_deflated_and_read_back(db: Engine, mapping_engine: MappingEngine) -> None:
    raw = Adt(control_id="Z-1").bytes()
    outcome = Pipeline(engine=mapping_engine, db=db).ingest(raw, transport="test")
    with db.connect() as conn:
        stored = conn.execute(select(messages.c.raw, messages.c.ack, messages.c.body)).one()
        record = MessageRepo(conn).get(outcome.message_id or 0)
    assert (bytes(stored.raw), stored.ack) == (b"", None)
    assert len(stored.body) < len(raw) / 2
    assert record is not None and record.raw == raw and record.ack == outcome.ack_text
    assert record.content_sha256 == hashlib.sha256(raw).hexdigest()  # what duplicates are compared by


def _old_row(db: Engine, raw: bytes) -> int:
    """A message as rows before 0006 hold it: raw bytes and ACK in their columns, no body."""
    values = {
        "received_at": NOW,
        "transport": "test",
        "content_sha256": hashlib.sha256(raw).hexdigest(),
        "raw": raw,
        "outcome": "AA",
        "status": "applied",
        "ack": "MSA|AA|OLD|\r",
        **HEADER,
    }
    with db.begin() as conn:
        return int(conn.execute(insert(messages).values(**values)).inserted_primary_key[0])  # type: ignore[index]


def test_rows_written_before_0006_are_read_as_they_are(db: Engine) -> None:
    raw = Adt(control_id="OLD").bytes()
    message_id = _old_row(db, raw)
    with db.connect() as conn:
        record = MessageRepo(conn).get(message_id)
        listed = MessageRepo(conn).list()
    assert record is not None and (record.raw, record.ack) == (raw, "MSA|AA|OLD|\r")
    assert [(m.raw, m.ack) for m in listed] == [(raw, "MSA|AA|OLD|\r")]


def test_downgrading_below_0006_puts_messages_back_in_their_columns(db: Engine) -> None:
    raw = Adt(control_id="NEW").bytes()
    with db.begin() as conn:
        message_id = MessageRepo(conn).add(
            raw=raw, transport="t", received_at=NOW, header=HEADER, outcome="AA", status="applied", ack="MSA|AA|N|\r"
        )
    cfg = alembic_config(db.url.render_as_string(hide_password=False))
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005_sessions")
    with db.connect() as conn:
        row = conn.exec_driver_sql(f"SELECT raw, ack FROM messages WHERE id = {message_id}").one()
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert (bytes(row[0]), row[1]) == (raw, "MSA|AA|N|\r")
    with db.connect() as conn:
        record = MessageRepo(conn).get(message_id)
    assert record is not None and (record.raw, record.ack) == (raw, "MSA|AA|N|\r")
