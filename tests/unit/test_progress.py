"""The bulk commands' progress bar (terminals only) and closing summary."""

from __future__ import annotations

import io

from gateway.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_then_a_summary() -> None:
    out = Terminal()
    progress = Progress(4, what="sent to h:1", stream=out)
    for code in ("AA", "AA", "AE", "AA"):
        progress.step(code)
    line = progress.summary()
    assert "\r[" + "#" * 30 + "] 4/4 AA=3 AE=1" in out.getvalue()
    assert line.startswith("sent to h:1: 4 of 4 in ") and line.endswith("(AA=3 AE=1)")


def test_no_bar_in_a_pipe() -> None:
    out = io.StringIO()
    progress = Progress(3, what="replayed", stream=out)
    progress.step("AA")
    progress.summary()
    assert "\r" not in out.getvalue() and out.getvalue().startswith("replayed: 1 of 3 in ")
