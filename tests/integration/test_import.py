"""``gateway import``: files and folders, several messages per file, event order, summary and exit status."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, select

from gateway import heap
from gateway.cli import main
from gateway.config import Settings
from gateway.db import schema
from gateway.db.repo import ResourceRepo
from gateway.importer import Progress, collect, event_key, split_messages
from gateway.mapping.engine import Engine as MappingEngine
from gateway.pipeline import IMPORT_GROUP, MAX_GROUP, Pipeline
from tests.messages import Adt

ADMIT = Adt(control_id="I-1", ipp="510001", visit="V-51", event_time="20260301080000")
DISCHARGE = Adt(
    trigger="A03", control_id="I-2", ipp="510001", visit="V-51", movement="MVT-2",
    event_time="20260302090000", discharge_time="20260302090000",
)  # fmt: skip


def test_split_handles_framing_and_line_ends() -> None:
    one, two = ADMIT.bytes(), DISCHARGE.bytes()
    data = b"\x0b" + one + b"\x1c\r" + two.replace(b"\r", b"\r\n") + b"\n\n"
    assert split_messages(data) == [one, two]


def test_collect_sorts_by_msh7_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.hl7").write_bytes(DISCHARGE.bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.hl7").write_bytes(ADMIT.bytes())
    (tmp_path / ".hidden").write_bytes(ADMIT.bytes())
    sources = collect([tmp_path])
    assert [event_key(s.raw) for s in sources] == ["20260301080000", "20260302090000"]
    assert [s.path.name for s in sources] == ["b.hl7", "a.hl7"]


def test_progress_on_a_pipe_prints_every_tenth() -> None:
    out = io.StringIO()
    progress = Progress(20, out=out, clock=lambda: 1.0)
    for done in range(1, 21):
        progress.update(done)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("[" + "#" * 30 + "] 20/20 messages")


def test_import_command(
    tmp_path: Path,
    settings: Settings,
    db: Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settled: list[bool] = []  # the command settles the collector after start-up (not this test process's)
    monkeypatch.setattr(heap, "settle", lambda: settled.append(True))
    folder = tmp_path / "history"
    folder.mkdir()
    (folder / "stay.hl7").write_bytes(DISCHARGE.bytes() + ADMIT.bytes())
    (folder / "other.hl7").write_bytes(b"MSH|^~\\&|X|Y|||20200101||ORU^R01|Z1|P|2.5\rPID|1\r")
    argv = ["--log-level", "WARNING", "import", "--quiet", "--database-url", settings.database_url]
    argv += ["--mappings-dir", str(settings.mappings_dir), str(folder)]
    assert main(argv) == 1  # one message is not AA
    assert settled == [True]
    out = capsys.readouterr().out
    assert "imported 3 messages" in out and "AA 2, AR 1" in out
    assert "AR " + str(folder / "other.hl7") + " #1" in out
    with db.connect() as conn:
        rows = conn.execute(select(schema.messages.c.control_id, schema.messages.c.status)).all()
        encounter = [
            r for r in ResourceRepo(conn).current() if r.type == "Encounter" and r.content["status"] == "finished"
        ]
    assert sorted(rows) == [("I-1", "applied"), ("I-2", "applied"), ("Z1", "rejected")]
    assert encounter  # the stay was admitted, then discharged


def test_import_groups_commit_once_each_and_keep_every_outcome_in_order(
    db: Engine, mapping_engine: MappingEngine
) -> None:
    """``Pipeline.ingest_groups``: one commit per group of ``size``; a refused message keeps its place."""
    pipeline = Pipeline(engine=mapping_engine, db=db)
    commits: list[int] = []
    event.listen(db, "commit", lambda conn: commits.append(1))
    bad = b"MSH|^~\\&|X|Y|||20200101||ORU^R01|Z1|P|2.5\rPID|1\r"
    raws = [Adt(control_id=f"G-{k}", ipp=f"52000{k}", visit=f"V-52{k}").bytes() if k != 2 else bad for k in range(5)]
    groups = list(pipeline.ingest_groups(raws, transport="import", size=2))
    assert [[o.code for o in group] for group in groups] == [["AA", "AA"], ["AR", "AA"], ["AA"]]
    assert len(commits) == 4  # three groups, and the refused message stored in its own transaction
    assert pipeline.ingest_many(raws[:1], transport="import")[0].status == "duplicate"


def test_import_groups_are_larger_on_sqlite_than_on_postgresql(db: Engine, mapping_engine: MappingEngine) -> None:
    """Without ``size``: ``IMPORT_GROUP`` messages a commit on SQLite (fewer fsyncs paid), ``MAX_GROUP`` on
    PostgreSQL (where larger groups imported slower, bench/README)."""
    pipeline = Pipeline(engine=mapping_engine, db=db)
    expected = IMPORT_GROUP if db.dialect.name == "sqlite" else MAX_GROUP
    raws = [Adt(control_id=f"S-{k}", ipp=f"53{k:04d}", visit=f"V-53{k}").bytes() for k in range(MAX_GROUP + 1)]
    sizes = [len(group) for group in pipeline.ingest_groups(raws, transport="import")]
    assert sizes == ([MAX_GROUP + 1] if expected > MAX_GROUP else [MAX_GROUP, 1])
