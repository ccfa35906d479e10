"""Browser fixtures: Debian's chromium driven by Playwright, a gateway on a free port, the network cut off.

``playwright install`` cannot download browsers here, so the tests launch the system's chromium
(``GATEWAY_CHROMIUM``, default ``/usr/bin/chromium``; ``scripts/test`` installs it with apt-get). When
it is missing the tests are skipped, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright

from gateway.config import Settings
from tests.browser.server import Served, serve_in_thread
from tests.conftest import MAPPINGS

CHROMIUM = Path(os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000
HANDLED_STATUS = "Failed to load resource: the server responded with a status of"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module, not per session: while Playwright's sync API runs, the main thread has a running event
    loop, and the other tests' ``asyncio.run`` would fail; closing it after each module gives it back."""
    if not CHROMIUM.exists():
        message = f"no chromium at {CHROMIUM} (apt-get install chromium, or set GATEWAY_CHROMIUM)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI=true: the browser tests are required", pytrace=False)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def page_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """The settings the pages are served with: a new SQLite store, no worker, no sandbox rate limit."""
    base: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'gateway.db'}",
        "mappings_dir": MAPPINGS,
        "run_worker": False,
        "sandbox_rate_per_minute": 0,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    """A module may override this fixture to serve other settings (``page_settings`` with its own)."""
    return page_settings(tmp_path)


@pytest.fixture
def gateway(gateway_settings: Settings) -> Iterator[Served]:
    with serve_in_thread(gateway_settings) as served:
        yield served


@dataclass
class Offline:
    """What the page tried to reach beyond the gateway (every such request is aborted)."""

    gateway_host: str
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        """Console errors count (a Content-Security-Policy refusal shows there), except an HTTP error status
        the page handles itself (a 401 before the user gives a token, say)."""
        if message.type == "error" and not message.text.startswith(HANDLED_STATUS):
            self.errors.append(message.text)

    def route(self, route: Route) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme in {"http", "https"} and parts.netloc == self.gateway_host:
            route.continue_()
            return
        if parts.scheme in {"data", "blob"}:
            route.continue_()
            return
        self.blocked.append(route.request.url)
        route.abort("internetdisconnected")


@pytest.fixture
def offline(gateway: Served) -> Offline:
    return Offline(gateway_host=gateway.host)


@pytest.fixture
def page(browser: Browser, gateway: Served, offline: Offline) -> Iterator[Page]:
    """A fresh context whose only reachable host is the gateway; page errors are collected."""
    context = browser.new_context(base_url=gateway.base, viewport={"width": 1366, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.route("**/*", offline.route)
    page = context.new_page()
    page.on("pageerror", lambda exc: offline.errors.append(str(exc)))
    page.on("console", offline.console)
    try:
        yield page
    finally:
        context.close()
    assert offline.errors == [], "JavaScript or console errors on the page"
