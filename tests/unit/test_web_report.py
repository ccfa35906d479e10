"""The conformance report of a file: counts by trigger and outcome, issues by kind, worst first, CSV."""

from __future__ import annotations

import csv
import io

from gateway.mapping.engine import Engine
from gateway.web.report import build_report, report_csv
from gateway.web.trial import run_trial
from tests.messages import Adt


def test_the_report_counts_ranks_and_exports(mapping_engine: Engine) -> None:
    feed = [
        Adt(control_id="R1").bytes(),
        Adt(control_id="R2", trigger="A03", movement="M2", event_time="20260302080000").bytes(),
        Adt(control_id="R3", extra_segments=["ZBE|X"]).bytes().replace(b"|HMS", b"|QQ"),
        b"MSH|^~\\&|A|B|C|D|20260301||ADT^A99|R4|P|2.5\rPID|1\r",
        Adt(control_id="R5", visit="", with_zbe=False).bytes(),
    ]
    trial = run_trial(feed, engine=mapping_engine, exhausted=lambda: False, notifications=False)
    report = build_report(trial, cpu_seconds=5)

    assert report["messages"] == 5
    assert report["outcomes"]["AR"] == 1
    a01 = next(r for r in report["by_trigger"] if r["trigger"] == "A01")
    assert a01["AA"] >= 2
    assert report["worst"][0]["control_id"] == "R4"
    assert report["worst"][0]["outcome"] == "AR"
    assert [r["outcome"] for r in report["worst"]] == sorted(
        (r["outcome"] for r in report["worst"]), key={"AR": 0, "AE": 1, "AA": 2}.get
    )
    kinds = {(k["location"], k["kind"]) for k in report["issues_by_kind"]}
    assert ("ZBE-9", "ZBE-9 movement nature … is not in the PAM-FR table; kept as is") in kinds

    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert [r["control_id"] for r in rows] == ["R1", "R2", "R3", "R4", "R5"]
    assert rows[3]["outcome"] == "AR"


def test_a_spent_cpu_budget_skips_the_rest(mapping_engine: Engine) -> None:
    trial = run_trial([Adt().bytes(), Adt(control_id="2").bytes()], engine=mapping_engine, exhausted=lambda: True)
    assert trial.steps == []
    assert trial.skipped == 2
    report = build_report(trial, cpu_seconds=5)
    assert report["skipped"] == 2
    assert report["skippedReason"] == "CPU budget of 5 s used up"
