"""``Gate.enabled`` is asked for every MLLP message and HTTP request: "no client registered yet" is
believed for a moment instead of read from the store each time, but never past a registration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, insert

from gateway.auth import gate as gate_module
from gateway.db import schema
from gateway.db.engine import transaction
from gateway.runtime import Runtime
from tests.auth_helpers import register


def counted_reads(runtime: Runtime) -> list[str]:
    seen: list[str] = []

    @event.listens_for(runtime.db, "before_cursor_execute")
    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM clients" in statement:
            seen.append(statement)

    return seen


def test_off_is_read_once_then_believed(runtime: Runtime) -> None:
    reads = counted_reads(runtime)
    assert [runtime.gate.enabled() for _ in range(50)] == [False] * 50
    assert len(reads) == 1


def test_a_client_registered_in_this_process_turns_it_on_at_once(runtime: Runtime) -> None:
    assert runtime.gate.enabled() is False
    register(runtime, "platform", "Parceo")
    assert runtime.gate.enabled() is True


def test_a_client_registered_elsewhere_is_seen_once_off_expires(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(gate_module.time, "monotonic", lambda: clock[0])
    assert runtime.gate.enabled() is False
    with transaction(runtime.db) as conn:  # another process's ``gateway clients add``: no in-process bump
        conn.execute(
            insert(schema.clients).values(
                id="c-other",
                kind="platform",
                name="eTICSS",
                secret_hash=None,
                scopes="",
                facilities="[]",
                authorities="{}",
                status="active",
                created_at=datetime.now(UTC),
            )
        )
    assert runtime.gate.enabled() is False  # still believed
    clock[0] += gate_module.OFF_RECHECK_SECONDS
    assert runtime.gate.enabled() is True
