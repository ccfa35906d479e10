"""The benchmarks keep running: each measures nothing here (speed targets live in bench/, never in tests),
it only has to finish, answer every message AA (deliver every event once, in order, signed; import every
message) and print the figures it is read for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str, script: str = "mllp_ingest.py") -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_mllp_ingest_with_floors_and_the_naive_peer() -> None:
    out = run_bench("--messages", "24", "--connections", "3", "--floors", "--peer")
    assert "AA              24/24" in out
    for label in ("floor, one commit/msg", "floor, group commit", "naive peer"):
        assert label in out and "gateway = " in out.split(label, 1)[1].splitlines()[0]


def test_mllp_ingest_paced() -> None:
    out = run_bench("--messages", "20", "--connections", "2", "--rate", "100")
    assert "paced at 100 messages/s" in out
    assert "AA              20/20" in out
    assert "ACK latency p99" in out


def test_mllp_ingest_over_two_instances() -> None:
    """Two gateway processes on one store (SQLite here: the cheap case), the connections spread over them."""
    out = run_bench("--messages", "20", "--connections", "2", "--instances", "2")
    assert "2 instances" in out.splitlines()[0]
    assert "AA              20/20" in out
    for k in (1, 2):
        assert f"instance {k} " in out and "10 messages" in out.split(f"instance {k} ", 1)[1].splitlines()[0]


def test_delivery_sustained_with_the_receiver_in_its_own_process() -> None:
    out = run_bench("--rate", "40", "--sustain", "1", "--connections", "2", script="delivery.py")
    assert "receiver in its own process" in out
    assert "40 of 40 tied to their message" in out
    assert "every event received once, in order, signed" in out


def test_delivery_sustained_with_the_receiver_in_the_bench_process() -> None:
    args = ("--rate", "40", "--sustain", "1", "--connections", "2", "--receiver-in-process")
    out = run_bench(*args, script="delivery.py")
    assert "receiver in the gateway's process" in out
    assert "every event received once, in order, signed" in out


def test_import_bench_imports_every_message() -> None:
    out = run_bench("--messages", "40", "--files", "3", script="import_files.py")
    assert "import: sqlite, 40 messages in 3 files" in out
    assert "imported 40 messages" in out and "AA 40" in out
    assert "import rate" in out


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_mllp_ingest_through_serve_with_two_workers(database_url: str) -> None:
    """The real ``gateway serve --workers 2`` (PostgreSQL: SQLite refuses several workers), one MLLP port."""
    out = run_bench("--messages", "24", "--connections", "6", "--workers", "2", "--database-url", database_url)
    assert "gateway serve --workers 2" in out.splitlines()[0]
    assert "AA              24/24" in out
    assert "serve CPU       parent" in out
    frames = [int(line.split()[2]) for line in out.splitlines() if line.startswith("  worker ")]
    assert len(frames) == 2 and sum(frames) == 24  # what each worker took, from one scrape
