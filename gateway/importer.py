"""``gateway import``: bulk onboarding of a hospital's history, from files and folders, in event order.

A file holds one message or several (one after another, MLLP-framed or not, segments ended by CR, LF or
CRLF). Messages are sorted by MSH-7 (the time the sending system built them; the fold does not need the
order, since the state is the same in any order, but notifications then go out in the order of events),
ties kept in file order, and stored through :meth:`Pipeline.ingest_groups`: the same checks, ACKs and
rejected-message records as live ingest, with up to ``IMPORT_GROUP`` messages per commit.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gateway.pipeline import Outcome, Pipeline

#: A message starts at an ``MSH`` segment at the beginning of the data or of a line.
_MESSAGE_START = re.compile(rb"(?:^|(?<=[\r\n\x0b]))MSH(?=.)")
_FRAMING = bytes([0x0B, 0x1C])
#: How many rejected messages the summary names (the rest are counted; ``/admin/messages?outcome=`` lists all).
SHOWN_REJECTS = 20


@dataclass(frozen=True, slots=True)
class Source:
    """One message found in a file: where it came from (for the summary) and its bytes."""

    path: Path
    index: int
    raw: bytes


@dataclass(slots=True)
class Summary:
    """What an import did: counts per ACK code and status, and the messages that were not applied."""

    total: int = 0
    elapsed: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    rejects: list[tuple[Source, Outcome]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    def add(self, source: Source, outcome: Outcome) -> None:
        self.total += 1
        self.codes[outcome.code] += 1
        self.statuses[outcome.status] += 1
        if outcome.code != "AA":
            self.rejects.append((source, outcome))


def files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every file named, and every file under the folders named (sorted; hidden files skipped)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        else:
            yield path


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a file, each with CR segment ends (as on the wire); framing bytes dropped."""
    cleaned = data.translate(None, _FRAMING)
    starts = [m.start() for m in _MESSAGE_START.finditer(cleaned)]
    out = []
    for begin, end in zip(starts, [*starts[1:], len(cleaned)], strict=True):
        lines = [line for line in re.split(rb"\r\n|\r|\n", cleaned[begin:end]) if line.strip()]
        if lines:
            out.append(b"\r".join(lines) + b"\r")
    return out


def event_key(raw: bytes) -> str:
    """MSH-7 as a sortable string: digits only, padded to seconds; missing or odd values sort first."""
    header = raw.split(b"\r", 1)[0]
    if len(header) < 4:
        return ""
    fields = header.split(header[3:4])
    stamp = fields[6].decode("ascii", "replace") if len(fields) > 6 else ""
    digits = re.match(r"\d*", stamp.split("^", 1)[0])
    return (digits.group(0) if digits else "")[:14].ljust(14, "0")


def collect(paths: Iterable[Path]) -> list[Source]:
    """Every message of every file, in event order (stable: file order, then position, on ties)."""
    found = [
        Source(path, index, raw) for path in files(paths) for index, raw in enumerate(split_messages(path.read_bytes()))
    ]
    return sorted(found, key=lambda s: event_key(s.raw))


class Progress:
    """A one-line progress bar on a terminal; on a pipe or file, a line every tenth of the way."""

    def __init__(self, total: int, *, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.out, self.clock = total, out, clock
        self.started = clock()
        self.tty = out.isatty()
        self._last_shown = -1.0
        self._last_tenth = 0

    def update(self, done: int) -> None:
        now = self.clock()
        if self.tty:
            if now - self._last_shown >= 0.1 or done == self.total:
                self._last_shown = now
                self.out.write("\r" + self.line(done, now))
                self.out.flush()
            return
        tenth = done * 10 // max(self.total, 1)
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self.out.write(self.line(done, now) + "\n")

    def line(self, done: int, now: float) -> str:
        width = 30
        filled = width * done // max(self.total, 1)
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0.0
        bar = "#" * filled + "." * (width - filled)
        return f"[{bar}] {done}/{self.total} messages  {rate:,.0f} msg/s  ETA {eta:,.0f} s"

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
        self.out.flush()


def run_import(pipeline: Pipeline, sources: list[Source], *, progress: Progress | None = None) -> Summary:
    """Store every message (see the module docstring); the summary says what became of each."""
    summary = Summary()
    started = time.monotonic()
    pending = iter(sources)
    for outcomes in pipeline.ingest_groups([s.raw for s in sources], transport="import"):
        for outcome in outcomes:
            summary.add(next(pending), outcome)
        if progress is not None:
            progress.update(summary.total)
    summary.elapsed = time.monotonic() - started
    if progress is not None:
        progress.close()
    return summary


def print_summary(summary: Summary, *, out: TextIO | None = None) -> None:
    """Counts and the messages to look at; never message contents (health data), only where they are."""
    out = out or sys.stdout
    codes = ", ".join(f"{code} {n}" for code, n in sorted(summary.codes.items())) or "nothing"
    statuses = ", ".join(f"{status} {n}" for status, n in sorted(summary.statuses.items()))
    out.write(f"imported {summary.total} messages in {summary.elapsed:.1f} s ({summary.rate:,.0f} msg/s): {codes}\n")
    if statuses:
        out.write(f"  by status: {statuses}\n")
    for source, outcome in summary.rejects[:SHOWN_REJECTS]:
        error = outcome.issues[0].text if outcome.issues else outcome.status
        stored = f"stored as message {outcome.message_id}" if outcome.message_id else "not stored"
        out.write(f"  {outcome.code} {source.path} #{source.index + 1}: {error} ({stored})\n")
    if len(summary.rejects) > SHOWN_REJECTS:
        out.write(f"  … and {len(summary.rejects) - SHOWN_REJECTS} more (GET /admin/messages?outcome=AE or AR)\n")
