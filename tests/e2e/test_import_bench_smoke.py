"""The import bench keeps running: it writes a history over several files, imports it with ``gateway import``
and prints the summary beside its own figures. It measures nothing here (speed targets live in bench/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_bench_imports_every_message() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "import_files.py"), "--messages", "40", "--files", "3"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "import: sqlite, 40 messages in 3 files" in done.stdout
    assert "imported 40 messages" in done.stdout and "AA 40" in done.stdout
    assert "import rate" in done.stdout
