"""The delivery bench keeps running with its receiver in a process of its own (its sustained default): it
measures nothing here, it has to finish, get every event once, in order and signed, and say where the
receiver ran (speed targets live in bench/, never in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_delivery_bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "delivery.py"), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sustained_run_with_the_receiver_in_its_own_process() -> None:
    out = run_delivery_bench("--rate", "40", "--sustain", "1", "--connections", "2")
    assert "receiver in its own process" in out
    assert "40 of 40 tied to their message" in out
    assert "every event received once, in order, signed" in out


def test_sustained_run_with_the_receiver_in_the_bench_process() -> None:
    out = run_delivery_bench("--rate", "40", "--sustain", "1", "--connections", "2", "--receiver-in-process")
    assert "receiver in the gateway's process" in out
    assert "every event received once, in order, signed" in out
