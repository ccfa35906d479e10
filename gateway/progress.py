"""Progress and summaries for the bulk commands (``send``, ``replay``, ``convert``), on stderr.

The bar is drawn only on a terminal (a pipe or a log file gets the summary alone), so that stdout keeps
just the command's output (ACKs, resources) and scripts can parse it.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

BAR_WIDTH = 30


class Progress:
    """``[#####.....] 12/40 AA=11 AE=1`` redrawn in place; ``summary()`` is the closing line."""

    def __init__(self, total: int, *, what: str, stream: TextIO | None = None) -> None:
        self.total, self.what = total, what
        self.stream = stream or sys.stderr
        self.done = 0
        self.tally: Counter[str] = Counter()
        self.started = time.perf_counter()
        self.live = self.stream.isatty() and total > 1

    def step(self, outcome: str) -> None:
        self.done += 1
        self.tally[outcome] += 1
        if self.live:
            filled = BAR_WIDTH * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {self._counts()}")
            self.stream.flush()

    def _counts(self) -> str:
        return " ".join(f"{code}={n}" for code, n in sorted(self.tally.items()))

    def summary(self) -> str:
        if self.live:
            self.stream.write("\n")
        seconds = time.perf_counter() - self.started
        line = f"{self.what}: {self.done} of {self.total} in {seconds:.1f} s ({self._counts() or 'none'})"
        self.stream.write(line + "\n")
        return line
