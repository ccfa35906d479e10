"""The operator console in a real browser, and every page with the network cut off but for the gateway."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from gateway.web.samples import build_samples
from tests.browser.conftest import Offline
from tests.browser.server import Served

pytestmark = pytest.mark.browser


def _send(gateway: Served, body: bytes) -> None:
    answer = httpx.post(f"{gateway.base}/hl7v2", content=body, headers={"Content-Type": "application/hl7-v2"})
    assert answer.status_code == 200


def _feed(gateway: Served) -> None:
    """An admission and a discharge (AA), a message from another sender (AA) and a broken one (AR)."""
    samples = {s.trigger: s for s in build_samples(gateway.runtime.engine.tables)}
    for message in samples["A03"].messages:
        _send(gateway, message.encode())
    _send(gateway, samples["A28"].messages[0].replace("GAM-SANDBOX|CH-SANDBOX", "GAM-OTHER|CH-OTHER").encode())
    _send(gateway, b"MSH|^~\\&|GAM-SANDBOX|CH-SANDBOX|GATEWAY|ARS|20261201||ADT^A99|BAD-1|P|2.5\rPID|1\r")


def test_the_console_filters_messages_and_replays_one(page: Page, gateway: Served) -> None:
    _feed(gateway)
    page.goto("/console/messages")
    rows = page.get_by_role("table", name="Messages, newest first").locator("tbody tr")
    expect(rows).to_have_count(4)

    page.get_by_label("Outcome").select_option("AR")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("BAD-1")

    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Sender (MSH-3 or MSH-4)").fill("CH-OTHER")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ADT^A28")

    page.get_by_role("link", name="Clear").click()
    page.get_by_label("IPP").fill("770101")
    page.get_by_label("Trigger").fill("A03")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link").click()

    expect(page.get_by_role("heading", name=re.compile(r"Message \d+ AA"))).to_be_visible()
    expect(page.get_by_role("table", name="Segments")).to_contain_text("ZBE")
    expect(page.locator("pre.ack-text")).to_contain_text("MSA|AA|SBX-A03-002")
    expect(page.locator("ul.changed")).to_contain_text("Encounter/")
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("Replayed: the pipeline answered AA")


#: Controls without an accessible name (label, aria-label, or a button's text).
UNLABELLED = """() => [...document.querySelectorAll("input:not([type=hidden]), select, textarea, button")]
  .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute("aria-label") && !c.textContent.trim())
  .map((c) => c.outerHTML)"""


def test_every_page_works_with_the_network_cut_off(page: Page, gateway: Served, offline: Offline) -> None:
    _feed(gateway)
    page.goto("/sandbox")
    assert page.evaluate(UNLABELLED) == []
    # Keyboard only: a sample chosen with the arrow keys, Tab to Convert, Enter.
    page.get_by_label("Sample messages").focus()
    page.keyboard.press("Home")
    expect(page.get_by_label("HL7 v2 message", exact=True)).to_have_value(re.compile("ADT\\^A05"))
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Convert")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("region", name="Results").locator("h3 .ack")).to_have_text(["AA"])

    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("HL7 v2 → FHIR gateway")
    expect(page.locator(".opblock-summary-path", has_text="/sandbox/convert")).to_be_visible()

    page.goto("/console/messages")
    expect(page.get_by_role("heading", name="Messages")).to_be_visible()
    assert page.evaluate(UNLABELLED) == []
    page.goto("/console/subscriptions")
    expect(page.get_by_role("heading", name="Subscriptions")).to_be_visible()
    page.goto("/console/live")
    expect(page.get_by_role("figure").filter(has_text="gateway_messages")).to_be_visible()
    assert offline.blocked == []
