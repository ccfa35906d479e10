"""Run every ``*.hl7`` of the public corpus through the full pipeline and report the ACKs as Markdown.

Usage (from the repository root)::

    .venv/bin/python scripts/corpus_report.py                 # ../shared/corpus
    .venv/bin/python scripts/corpus_report.py --corpus DIR --details
    .venv/bin/python scripts/corpus_report.py --isolate      # each file on an empty store

Each message is ingested (``Pipeline.ingest``, transport ``sandbox``) into a throw-away SQLite store in a
temporary directory, folder by folder, files in sorted order, so later messages see the state left by
earlier ones, as on a real feed. The public samples are not a feed, though: many reuse a sender's MSH-10
for different content, which the gateway answers AE 205 on a shared store. ``--isolate`` empties the store
before each file, so that every message is judged on its own content.

The report counts AA / AE / AR per folder and trigger (MSH-9.1^MSH-9.2 as the gateway reads them) with
the distinct reasons: ERR-3 code and ERR-8 text of errors, the warning texts of accepted messages. It
reads the ACK the sender would get, not the pipeline's internals.

Never prints message contents (health data): only file names, message types, outcomes, codes and the
gateway's own error texts. Exits 0 whatever the outcomes; 1 only when the pipeline raised (it must not).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from gateway.config import Settings  # noqa: E402
from gateway.db.schema import metadata  # noqa: E402
from gateway.errors import ParseError  # noqa: E402
from gateway.hl7 import er7  # noqa: E402
from gateway.mapping.engine import read_header  # noqa: E402
from gateway.runtime import Runtime  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
CODES = ("AA", "AE", "AR")


@dataclass(slots=True)
class Result:
    """One file's outcome, as the ACK tells it."""

    folder: str
    name: str
    trigger: str
    code: str
    status: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def trigger_of(raw: bytes) -> str:
    """MSH-9.1^MSH-9.2 as the gateway reads them, or a placeholder when the header is unreadable."""
    try:
        header = read_header(er7.parse(raw))
    except ParseError:
        return "(unreadable)"
    return f"{header.message_type or '?'}^{header.trigger or '?'}"


def read_ack(ack: bytes) -> tuple[str, list[str], list[str]]:
    """MSA-1, then the errors (``code text``) and the warnings (text) of the ACK's ERR segments."""
    try:
        message = er7.parse(ack)
    except ParseError:
        return "(ACK unreadable)", [], []
    msa = message.segment("MSA")
    code = msa.get(1) if msa else "(no MSA)"
    errors: list[str] = []
    warnings: list[str] = []
    for err in message.all("ERR"):
        text = err.get(8).strip()
        if err.get(4).strip().upper() in ("W", "I"):
            warnings.append(text)
        else:
            errors.append(f"{err.get(3, 1)} {text}".strip())
    return code, errors, warnings


def corpus_files(corpus: Path) -> list[Path]:
    """Every ``*.hl7``, grouped by folder (sorted), files sorted inside each folder."""
    return sorted(corpus.rglob("*.hl7"), key=lambda p: (p.parent.relative_to(corpus).as_posix(), p.name))


def empty_store(runtime: Runtime) -> None:
    """Delete every row (children first): the next message meets a store as new."""
    with runtime.db.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def run(corpus: Path, *, isolate: bool = False) -> tuple[list[Result], list[str]]:
    """Ingest every file; returns the results and the tracebacks of any exception the pipeline raised."""
    failures: list[str] = []
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="corpus-report-") as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'report.db'}", run_worker=False)
        runtime = Runtime.build(settings)
        try:
            for path in corpus_files(corpus):
                folder = path.parent.relative_to(corpus).as_posix()
                raw = path.read_bytes()
                if isolate:
                    empty_store(runtime)
                try:
                    outcome = runtime.pipeline.ingest(raw, transport="sandbox")
                except Exception:
                    failures.append(f"{folder}/{path.name}:\n{traceback.format_exc()}")
                    results.append(Result(folder, path.name, trigger_of(raw), "(raised)", "raised"))
                    continue
                code, errors, warnings = read_ack(outcome.ack)
                results.append(Result(folder, path.name, trigger_of(raw), code, outcome.status, errors, warnings))
        finally:
            runtime.close()
    return results, failures


def cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, line breaks flattened."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def counted(items: list[str]) -> str:
    """Distinct items with their counts, most frequent first: ``a (×3); b``."""
    parts = [f"{item} (×{n})" if n > 1 else item for item, n in Counter(items).most_common()]
    return "; ".join(parts)


def summary_table(results: list[Result]) -> list[str]:
    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for result in results:
        groups[(result.folder, result.trigger)].append(result)
    lines = [
        "| folder | trigger | files | AA | AE | AR | reasons (errors; warnings on AA) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for (folder, trigger), items in sorted(groups.items()):
        codes = Counter(r.code for r in items)
        errors = [e for r in items for e in r.errors]
        warnings = [w for r in items if r.code == "AA" for w in r.warnings]
        other = [r.code for r in items if r.code not in CODES]
        reasons = []
        if errors:
            reasons.append(counted(errors))
        if warnings:
            reasons.append("warnings: " + counted(warnings))
        if other:
            reasons.append("other outcomes: " + counted(other))
        lines.append(
            f"| {cell(folder)} | {cell(trigger)} | {len(items)} | {codes['AA']} | {codes['AE']} | {codes['AR']} "
            f"| {cell(' — '.join(reasons))} |"
        )
    totals = Counter(r.code for r in results)
    lines.append(f"| **total** | | {len(results)} | {totals['AA']} | {totals['AE']} | {totals['AR']} | |")
    return lines


def details_table(results: list[Result]) -> list[str]:
    lines = ["| folder | file | trigger | MSA-1 | status | errors | warnings |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {cell(r.folder)} | {cell(r.name)} | {cell(r.trigger)} | {r.code} | {r.status} "
            f"| {cell('; '.join(r.errors))} | {cell('; '.join(r.warnings))} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help=f"corpus directory (default {DEFAULT_CORPUS})"
    )
    parser.add_argument("--details", action="store_true", help="add a per-file table")
    parser.add_argument("--isolate", action="store_true", help="empty the store before each file")
    args = parser.parse_args(argv)
    corpus: Path = args.corpus.resolve()
    if not corpus.is_dir():
        print(f"corpus directory not found: {corpus}", file=sys.stderr)
        return 0
    # The pipeline logs every message at INFO; only problems belong on stderr here.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    results, failures = run(corpus, isolate=args.isolate)
    mode = "each file on an empty store" if args.isolate else "one store, files in order"
    out = [f"# Corpus report: {len(results)} messages from `{corpus}` ({mode})", "", *summary_table(results)]
    reused = sum(1 for r in results if any(e.startswith("205 ") for e in r.errors))
    if reused and not args.isolate:
        out += [
            "",
            f"{reused} message(s) got AE 205: the corpus reuses their sender's MSH-10 for other content. "
            "Run with `--isolate` to judge them on their content.",
        ]
    if args.details:
        out += ["", "## Per file", "", *details_table(results)]
    print("\n".join(out))
    if failures:
        print(f"\nthe pipeline raised on {len(failures)} message(s):", file=sys.stderr)
        for failure in failures:
            print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
