"""The sandbox in a real browser: paste a sample and Convert; upload a file and read its report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from gateway.web.samples import build_samples
from tests.browser.conftest import Offline
from tests.browser.server import Served

pytestmark = pytest.mark.browser


def test_a_pasted_sample_converts_to_aa_and_shows_the_resources(page: Page, offline: Offline, gateway: Served) -> None:
    # What the API answers for the same sample: the page must show all of it.
    sample = next(s for s in build_samples(gateway.runtime.engine.tables) if s.trigger == "A03")
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    api = httpx.post(f"{gateway.base}/sandbox/convert", content=sample.text.encode(), headers=headers).json()
    resources, notifications = len(api["bundle"]["entry"]), len(api["notifications"])
    assert resources >= 5 and notifications >= 2
    page.goto("/sandbox")
    page.get_by_label("Sample messages").select_option("A03")
    expect(page.get_by_label("HL7 v2 message", exact=True)).to_have_value(re.compile(r"ADT\^A03\^ADT_A03"))
    page.get_by_role("button", name="Convert").click()

    results = page.get_by_role("region", name="Results")
    expect(results.locator("h3 .ack")).to_have_text(["AA", "AA"])
    expect(results.get_by_role("heading", name=f"Resources ({resources})")).to_be_visible()
    expect(results.locator("summary").filter(has_text="Patient/")).to_contain_text("ÉLODIE DURAND")
    timeline = results.get_by_role("table").filter(has_text="Movement").first
    expect(timeline).to_contain_text("discharge")
    expect(
        results.get_by_role("heading", name=f"Notifications a subscriber would receive ({notifications})")
    ).to_be_visible()
    assert offline.blocked == []


def test_err_lines_point_at_the_field_in_the_message(page: Page, gateway: Served) -> None:
    sample = next(s for s in build_samples(gateway.runtime.engine.tables) if s.trigger == "A01")
    # Neither a visit number (PV1-19) nor an account number (PID-18): AE 101 at PV1-19.
    broken = re.sub(r"880101\^\^\^[^|]*\^AN", "", sample.text.replace("SBX-V1^^^", "^^^"))
    page.goto("/sandbox")
    page.get_by_label("HL7 v2 message", exact=True).fill(broken)
    page.get_by_role("button", name="Convert").click()

    card = page.locator("article.msg").first
    expect(card.locator("h3 .ack")).to_have_text("AE")
    expect(card.get_by_role("list", name="ERR lines")).to_contain_text("PV1-19")
    expect(card.locator("mark[title='PV1-19']")).to_have_count(1)


def test_an_uploaded_file_gives_a_conformance_report_downloadable_as_json_and_csv(
    page: Page, tmp_path: Path, gateway: Served
) -> None:
    samples = build_samples(gateway.runtime.engine.tables)
    body = "\n\n".join(s.text for s in samples[:6]) + "\n\nMSH|^~\\&|broken\n"
    upload = tmp_path / "feed.hl7"
    upload.write_text(body, encoding="utf-8")
    page.goto("/sandbox")
    page.get_by_label("File of several messages").set_input_files(upload)
    page.get_by_role("button", name="Check file").click()

    report = page.get_by_role("region", name="Conformance report")
    expect(report.get_by_role("heading", name="Conformance report: feed.hl7")).to_be_visible()
    by_trigger = report.get_by_role("table", name="Counts by trigger and outcome")
    expect(by_trigger.get_by_role("row").filter(has_text="A01")).to_be_visible()
    worst = report.get_by_role("table", name="Worst messages first")
    expect(worst.get_by_role("row").nth(1)).to_contain_text("AR")

    with page.expect_download() as json_download:
        report.get_by_role("button", name="Download JSON").click()
    data = json.loads(Path(json_download.value.path()).read_text(encoding="utf-8"))
    assert data["outcomes"]["AR"] == 1
    assert data["messages"] == len(data["rows"]) > 6
    with page.expect_download() as csv_download:
        report.get_by_role("button", name="Download CSV").click()
    lines = Path(csv_download.value.path()).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("number,control_id,trigger,outcome")
    assert len(lines) == data["messages"] + 1
