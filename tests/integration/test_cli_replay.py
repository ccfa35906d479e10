"""``gateway replay`` on a real store: what it says per message, its summary, and its exit status."""

from __future__ import annotations

import pytest

from gateway import cli
from gateway.config import Settings
from gateway.runtime import Runtime
from tests.conftest import MAPPINGS
from tests.messages import Adt


def test_replay_says_what_happened_to_each_message(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    runtime = Runtime.build(settings, run_migrations=False)
    try:
        applied = runtime.pipeline.ingest(Adt(control_id="CLI-1").bytes(), transport="mllp")
        refused = runtime.pipeline.ingest(Adt(control_id="CLI-2", visit="").bytes(), transport="mllp")
    finally:
        runtime.close()
    assert applied.message_id and refused.message_id
    argv = ["replay", str(applied.message_id), str(refused.message_id), "999999"]
    code = cli.main([*argv, "--database-url", settings.database_url, "--mappings-dir", str(MAPPINGS)])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"message {applied.message_id}: AA (reprocessed): nothing changed" in out
    assert f"message {refused.message_id}: AE (error), stored as " in out  # ingested anew, still refused
    assert "message 999999: not found" in err and "replayed: 3 of 3" in err and "missing=1" in err
