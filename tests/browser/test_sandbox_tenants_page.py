"""A sandbox sender's messages (isolated store) appear on the sandbox page, with a token, and open in it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from gateway.config import Settings
from tests.browser.server import Served
from tests.messages import Adt

pytestmark = pytest.mark.browser


@pytest.fixture
def gateway_settings(gateway_settings: Settings, tmp_path: Path) -> Settings:
    return gateway_settings.model_copy(
        update={
            "sandbox_database_url": f"sqlite:///{tmp_path / 'sandbox.db'}",
            "sandbox_senders": ["GAM-SBX"],
            "api_token": "s3cret",
        }
    )


def test_a_sandbox_senders_message_shows_on_the_page_and_converts(page: Page, gateway: Served) -> None:
    message = Adt(control_id="TEN-1", sender="GAM-SBX", facility="CH-SBX").bytes()
    answer = httpx.post(f"{gateway.base}/hl7v2", content=message, headers={"Content-Type": "application/hl7-v2"})
    assert answer.headers["X-Ack-Code"] == "AA"
    page.goto("/sandbox")
    expect(page.locator("#tenants-status")).to_contain_text("need a token")
    page.locator("summary", has_text="Access token").click()
    page.get_by_label("Bearer token (only when the gateway requires one for the sandbox)").fill("s3cret")
    page.get_by_label("Bearer token (only when the gateway requires one for the sandbox)").press("Tab")
    rows = page.get_by_role("table", name="Messages from sandbox senders").locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("TEN-1")
    page.get_by_role("button", name="Open sandbox message 1").click()
    expect(page.get_by_role("region", name="Results").locator("h3 .ack")).to_have_text(["AA"])
