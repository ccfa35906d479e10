"""A sandbox sender's messages (isolated store) appear on the sandbox page, with a token, and open in it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from gateway.config import Settings
from tests.auth_helpers import register
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


def _send_as(gateway: Served, client_id: str, secret: str | None, message: bytes) -> None:
    got = httpx.post(
        f"{gateway.base}/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret or "")
    )
    headers = {"Content-Type": "application/hl7-v2", "Authorization": f"Bearer {got.json()['access_token']}"}
    assert httpx.post(f"{gateway.base}/hl7v2", content=message, headers=headers).headers["X-Ack-Code"] == "AA"


def test_a_signed_in_sandbox_sender_sees_only_its_own_messages(page: Page, gateway: Served) -> None:
    mine_id, mine_secret = register(gateway.runtime, "sender", "trial-a", facilities=["CH-TA"], sandbox=True)
    theirs_id, theirs_secret = register(gateway.runtime, "sender", "trial-b", facilities=["CH-TB"], sandbox=True)
    _send_as(gateway, mine_id, mine_secret, Adt(control_id="MINE-1", facility="CH-TA").bytes())
    _send_as(gateway, theirs_id, theirs_secret, Adt(control_id="THEIRS-1", facility="CH-TB").bytes())
    page.goto("/sandbox")
    page.get_by_role("link", name="Sign in").click()
    page.get_by_label("Client id").fill(mine_id)
    page.get_by_label("Client secret").fill(mine_secret or "")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/sandbox$"))
    expect(page.get_by_role("banner")).to_contain_text("Signed in as trial-a (sender)")
    rows = page.get_by_role("table", name="Messages from sandbox senders").locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("MINE-1")
    # the session (with its CSRF header) also carries the page's own Convert calls
    page.get_by_role("button", name=re.compile("Open sandbox message")).click()
    expect(page.get_by_role("region", name="Results").locator("h3 .ack")).to_have_text(["AA"])
