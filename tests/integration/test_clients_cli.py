"""#13: ``gateway clients add|list|rotate|revoke|authorities`` as the issue names them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from gateway.auth.hashing import verify_secret
from gateway.cli import main
from gateway.config import Settings
from gateway.db.access import ClientRepo
from gateway.db.engine import make_engine


@pytest.fixture(autouse=True)
def _logging_left_alone() -> Iterator[None]:
    """``main()`` configures logging for the process: put it back, later tests count log records."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate) for lg in loggers]
    yield
    for lg, level, handlers, propagate in saved:
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_clients_commands(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", database_url]
    code, out, _ = _run(capsys, "clients", "add", "--kind", "platform", "--name", "Parceo", "--json", *db)
    assert code == 0
    created = json.loads(out.strip().splitlines()[-1])
    client_id, secret = created["client_id"], created["client_secret"]
    code, out, _ = _run(
        capsys, "clients", "add", "--kind", "sender", "--name", "chu-x", "--facility", "CHU-X", "--json", *db
    )
    sender = json.loads(out.strip().splitlines()[-1])
    assert sender["facilities"] == ["CHU-X"]
    code, out, _ = _run(capsys, "clients", "list", *db)
    assert code == 0 and "Parceo" in out and "chu-x" in out and secret not in out
    assert _run(capsys, "clients", "add", "--kind", "platform", "--name", "Parceo", *db)[0] == 2  # names unique
    assert _run(capsys, "clients", "add", "--kind", "platform", "--name", "x", "--scope", "bad", *db)[0] == 2
    code, out, _ = _run(capsys, "clients", "rotate", client_id, "--json", *db)
    rotated = json.loads(out.strip().splitlines()[-1])["client_secret"]
    code, out, _ = _run(
        capsys, "clients", "authorities", sender["client_id"], "--set", "CHU-X&000897406&N=urn:oid:1.2.3.4", *db
    )
    assert code == 0 and "CHU-X&000897406&N = urn:oid:1.2.3.4" in out
    assert _run(capsys, "clients", "authorities", client_id, "--set", "A=urn:oid:1.2", *db)[0] == 2  # not a sender
    assert _run(capsys, "clients", "revoke", client_id, *db)[0] == 0
    engine = make_engine(Settings(database_url=database_url))
    with engine.connect() as conn:
        record = ClientRepo(conn).get(client_id)
    engine.dispose()
    assert record is not None and record.status == "revoked" and record.secret_hash
    assert verify_secret(rotated, record.secret_hash) and not verify_secret(secret, record.secret_hash)


def test_clients_add_sandbox_marks_a_sandbox_sender(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", database_url]
    add = ["clients", "add", "--kind", "sender", "--json"]
    code, out, _ = _run(capsys, *add, "--name", "trial", "--facility", "CH-TRIAL", "--sandbox", *db)
    created = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and created["sandbox"] is True
    assert {"gateway/sandbox", "gateway/sandbox-tenant"} <= set(created["scope"].split())
    assert _run(capsys, *add, "--name", "real", "--facility", "CH-REAL", *db)[0] == 0
    assert _run(capsys, *add, "--name", "mixed", "--facility", "CH-REAL", "--sandbox", *db)[0] == 2  # a real one's
    assert _run(capsys, "clients", "add", "--kind", "platform", "--name", "p", "--sandbox", *db)[0] == 2
