"""The conformance report for a file of many messages: counts by trigger and outcome, warnings by kind,
the worst messages first; as JSON (the page and the API) or CSV (a spreadsheet for the go-live meeting).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from typing import Any

from gateway.errors import GatewayError
from gateway.hl7 import er7
from gateway.mapping.engine import read_header
from gateway.web.present import skipped_reason
from gateway.web.trial import Step, Trial

JSON = dict[str, Any]
#: Worst first: a rejected message (AR) matters more than an error (AE), which matters more than warnings.
SEVERITY = {"AR": 0, "AE": 1, "AA": 2}
WORST_LIMIT = 50
CSV_COLUMNS = ("number", "control_id", "trigger", "outcome", "errors", "warnings", "first_issue")
#: Numbers and quoted values vary between messages; the kind of a warning is its text without them.
_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|(?<![\w-])\d[\d.:-]*\b")


def build_report(trial: Trial, *, cpu_seconds: float) -> JSON:
    rows = [_row(step) for step in trial.steps]
    by_trigger: dict[str, Counter[str]] = {}
    for row in rows:
        by_trigger.setdefault(row["trigger"] or "?", Counter())[row["outcome"]] += 1
    kinds: Counter[tuple[str, str, str]] = Counter()
    for step in trial.steps:
        for issue in step.issues:
            kinds[(issue.severity, issue.location, _VARYING.sub("…", issue.text))] += 1
    worst = sorted(rows, key=lambda r: (SEVERITY.get(r["outcome"], 0), -r["errors"], -r["warnings"], r["number"]))
    return {
        "messages": len(rows),
        "skipped": trial.skipped,
        "skippedReason": skipped_reason(trial.skipped, cpu_seconds=cpu_seconds),
        "outcomes": dict(Counter(r["outcome"] for r in rows)),
        "by_trigger": [
            {"trigger": trigger, **{code: counts.get(code, 0) for code in ("AA", "AE", "AR")}}
            for trigger, counts in sorted(by_trigger.items())
        ],
        "issues_by_kind": [
            {"severity": sev, "location": loc, "kind": text, "count": count}
            for (sev, loc, text), count in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "worst": [r for r in worst if r["outcome"] != "AA" or r["warnings"]][:WORST_LIMIT],
        "rows": rows,
    }


def _row(step: Step) -> JSON:
    header = _header(step.raw)
    errors = [i for i in step.issues if i.severity == "E"]
    warnings = [i for i in step.issues if i.severity != "E"]
    first = next(iter(errors or warnings), None)
    return {
        "number": step.number,
        "control_id": header.get("control_id", ""),
        "trigger": header.get("trigger", ""),
        "outcome": step.code,
        "errors": len(errors),
        "warnings": len(warnings),
        "first_issue": f"{first.location}: {first.text}" if first else "",
    }


def _header(raw: bytes) -> dict[str, str]:
    """MSH-9.2 and MSH-10 for the report; a message too broken to read keeps empty values."""
    try:
        header = read_header(er7.parse(raw))
    except GatewayError:  # the pipeline already answered AR; the report only needs to carry on
        return {}
    return {"control_id": header.control_id, "trigger": header.trigger}


def report_csv(report: JSON) -> str:
    """One line per message, in the order received (the JSON's ``rows``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    return out.getvalue()
