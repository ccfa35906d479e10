"""Accessibility: every control labelled on every page, keyboard-only use, outcomes readable without colour."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from gateway.config import Settings
from tests.auth_helpers import register
from tests.browser.conftest import page_settings
from tests.browser.server import Served
from tests.browser.test_console_pages import UNLABELLED
from tests.messages import Adt

pytestmark = pytest.mark.browser
#: What the focused element is, for a readable tab order.
FOCUSED = """() => { const e = document.activeElement;
  const label = e.labels && e.labels[0] ? e.labels[0].textContent : e.getAttribute("aria-label");
  return (label || e.textContent || e.id).trim(); }"""


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    return page_settings(tmp_path, api_token="local-token")


def _tab_until(page: Page, name: str, *, limit: int = 20, key: str = "Tab") -> list[str]:
    """Tab from where the focus is until the control named ``name`` has it; the names passed on the way."""
    seen: list[str] = []
    for _ in range(limit):
        page.keyboard.press(key)
        seen.append(page.evaluate(FOCUSED))
        if seen[-1] == name:
            return seen
    raise AssertionError(f"{name!r} not reached by Tab; the order was {seen}")


def test_the_sandbox_by_keyboard_alone_and_its_outcome_as_text(page: Page, gateway: Served) -> None:
    page.goto("/sandbox")
    assert page.evaluate(UNLABELLED) == []
    order = _tab_until(page, "Convert")
    assert order[0] == "Skip to content"
    assert order.index("Sample messages") < order.index("HL7 v2 message") < order.index("Convert")
    page.keyboard.press("Shift+Tab")  # back to the text area, type a message with errors, Convert with Enter
    expect(page.get_by_label("HL7 v2 message", exact=True)).to_be_focused()
    page.keyboard.insert_text(Adt(control_id="KB-1", visit="").build().replace("\r", "\n"))
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")

    results = page.get_by_role("region", name="Results")
    expect(results.locator("h3").first).to_have_text("Message 1: ACK AE — accepted with errors")
    expect(page.locator("#status")).to_have_text("Converted 1 message(s): AE.")
    expect(results.get_by_role("list", name="ERR lines")).to_contain_text(re.compile(r"(warning|error) PV1-19"))
    expect(results.locator("h2").first).to_be_focused()  # the results, not back at the top
    # Without colour (forced colours, as Windows high contrast): the same words are there.
    page.emulate_media(forced_colors="active")
    expect(results.locator("h3").first).to_contain_text("AE — accepted with errors")
    assert page.evaluate(UNLABELLED) == []


def test_sign_in_and_the_console_by_keyboard_alone(page: Page, gateway: Served) -> None:
    operator_id, secret = register(gateway.runtime, "operator", "ops")
    gateway.runtime.pipeline.ingest(Adt(control_id="KB-2").bytes(), transport="test")
    page.goto("/console/messages")
    expect(page).to_have_url(re.compile("/sign-in"))
    assert page.evaluate(UNLABELLED) == []
    _tab_until(page, "Client id")
    page.keyboard.type(operator_id)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Client secret")).to_be_focused()
    page.keyboard.type(secret or "")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Messages")).to_be_visible()
    assert page.evaluate(UNLABELLED) == []

    _tab_until(page, "Outcome")
    page.keyboard.press("ArrowDown")  # the first code, AA
    _tab_until(page, "Filter")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"outcome=AA"))
    link = page.get_by_role("table", name="Messages, newest first").get_by_role("link").first
    link.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile(r"Message \d+ AA"))).to_be_visible()
    assert page.evaluate(UNLABELLED) == []
    _tab_until(page, "Replay")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Replayed: the pipeline answered AA")
    _tab_until(page, "Sign out", key="Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("You are signed out.")


def test_with_authentication_on_the_sandbox_says_how_to_get_in(page: Page, gateway: Served) -> None:
    register(gateway.runtime, "operator", "ops")  # authentication is on from now on
    page.goto("/sandbox")
    page.get_by_label("Sample messages").select_option(index=0)
    page.get_by_role("button", name="Convert").click()
    expect(page.locator("#status")).to_contain_text("401")
    expect(page.locator("#status")).to_contain_text("Sign in, top right, or give a token under Access token")
