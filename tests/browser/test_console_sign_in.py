"""Authentication on: an operator signs in on the page, filters, replays, signs out; no CSRF token, no change."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from gateway.config import Settings
from gateway.web.samples import build_samples
from tests.auth_helpers import register
from tests.browser.conftest import page_settings
from tests.browser.server import Served

pytestmark = pytest.mark.browser


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    return page_settings(tmp_path, auth="required")


def _feed(gateway: Served) -> None:
    """A stay (AA) and a broken message (AR), sent by a registered sender with its token."""
    sender_id, secret = register(gateway.runtime, "sender", "engine", facilities=["CH-SANDBOX"])
    form = {"grant_type": "client_credentials"}
    got = httpx.post(f"{gateway.base}/oauth/token", data=form, auth=(sender_id, secret or ""))
    headers = {"Content-Type": "application/hl7-v2", "Authorization": f"Bearer {got.json()['access_token']}"}
    samples = {s.trigger: s for s in build_samples(gateway.runtime.engine.tables)}
    bad = "MSH|^~\\&|GAM-SANDBOX|CH-SANDBOX|GATEWAY|ARS|20261201||ADT^A99|BAD-1|P|2.5\rPID|1\r"
    for message in [*samples["A03"].messages, bad]:
        assert httpx.post(f"{gateway.base}/hl7v2", content=message.encode(), headers=headers).status_code == 200


def test_an_operator_signs_in_filters_replays_and_signs_out(page: Page, gateway: Served) -> None:
    _feed(gateway)
    operator_id, secret = register(gateway.runtime, "operator", "night-shift")
    page.goto("/console/messages?outcome=AR")
    expect(page).to_have_url(re.compile(r"/sign-in\?next="))
    page.get_by_label("Client id").fill(operator_id)
    page.get_by_label("Client secret").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("sign-in failed")
    page.get_by_label("Client id").fill(operator_id)
    page.get_by_label("Client secret").fill(secret or "")
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(re.compile(r"/console/messages\?outcome=AR$"))
    expect(page.get_by_role("banner")).to_contain_text("Signed in as night-shift (operator)")
    rows = page.get_by_role("table", name="Messages, newest first").locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("BAD-1")
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Trigger").fill("A03")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link").click()
    message_url = page.url
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("Replayed: the pipeline answered AA")

    # The same browser, the same session cookie, but a form without the page's CSRF token: refused.
    replay = message_url.split("?")[0] + "/replay"
    forged = page.request.post(replay, form={"note": "no token"}, max_redirects=0)
    assert forged.status == 403 and "CSRF" in forged.text()
    page.evaluate("document.querySelector('form[action$=\"/replay\"] input[name=csrf_token]').remove()")
    page.get_by_role("button", name="Replay").click()
    expect(page.locator("body")).to_contain_text("CSRF token")

    page.goto(message_url)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("You are signed out.")
    page.goto("/console/subscriptions")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/console/subscriptions"))
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert "gateway_session" not in cookies
