"""``gateway convert``: the dry run an integrator starts with — the ACKs and the FHIR some files produce.

The messages run through the real pipeline, in order, on a throw-away in-memory store: what is printed
is exactly what the gateway would hold after them (stays folded, movements, care circle, merges), and
nothing touches the real store.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.clock import utcnow
from gateway.db.engine import reading, throwaway_engine
from gateway.db.repo import ResourceRepo
from gateway.hl7.ack import AckIssue
from gateway.mapping.engine import Engine
from gateway.pipeline import Pipeline

JSON = dict[str, Any]
#: Resource types in the order a reader expects them.
ORDER = ("Patient", "Encounter", "CareTeam", "Practitioner", "Subscription")


@dataclass(slots=True)
class Converted:
    """What a sequence of messages produced: each ACK (code, issues) and the resulting resources."""

    acks: list[tuple[str, list[AckIssue], str]]
    resources: list[JSON]


def convert_messages(
    raws: Iterable[bytes],
    *,
    engine: Engine,
    clock: Callable[[], datetime] = utcnow,
    exhausted: Callable[[], bool] | None = None,
) -> Converted:
    """``exhausted`` is asked before each message; once it says yes the rest are left out (a CPU budget)."""
    db = throwaway_engine()  # the declared schema, as the sandbox's: migrating cost ~40 ms a call
    try:
        pipeline = Pipeline(engine=engine, db=db, clock=clock)
        acks = []
        for raw in raws:
            if exhausted is not None and exhausted():
                break
            outcome = pipeline.ingest(raw, transport="convert")
            acks.append((outcome.code, outcome.issues, outcome.ack_text))
        with reading(db) as conn:
            found = [stored.content for stored in ResourceRepo(conn).current()]
    finally:
        db.dispose()
    found.sort(key=lambda r: (ORDER.index(r["resourceType"]) if r["resourceType"] in ORDER else 99, r["id"]))
    return Converted(acks=acks, resources=found)


def convert_files(
    inputs: list[tuple[str, bytes]], *, mappings_dir: Path, out: TextIO, report: TextIO | None = None
) -> int:
    """``inputs`` are (name, bytes) pairs; exit status 1 when any message is not AA."""
    engine = Engine.from_directory(mappings_dir)
    result = convert_messages((raw for _, raw in inputs), engine=engine)
    worst = 0
    for (path, _raw), (code, _issues, ack) in zip(inputs, result.acks, strict=True):
        out.write(f"=== {path}: {code}\n")
        out.write(ack.replace("\r", "\n"))
        worst = max(worst, 0 if code == "AA" else 1)
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in result.resources]}
    out.write(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n")
    if report is not None:  # the summary goes apart from the output, which scripts may parse
        tally = Counter(code for code, _issues, _ack in result.acks)
        counts = " ".join(f"{code}={n}" for code, n in sorted(tally.items()))
        report.write(f"converted: {len(result.acks)} message(s) ({counts}), {len(result.resources)} resource(s)\n")
    return worst
