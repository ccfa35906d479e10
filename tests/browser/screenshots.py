"""Screenshots of the sandbox and the console for the README: ``.venv/bin/python -m tests.browser.screenshots``.

A gateway on a throw-away store is fed a few stays (and one broken message), then each page is
captured in Debian's chromium into ``docs/screenshots/``.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

from gateway.config import Settings
from gateway.web.live import LiveSampler
from gateway.web.samples import build_samples
from tests.api_helpers import BACKPORT
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.browser.server import Served, serve_in_thread
from tests.conftest import MAPPINGS, ROOT

OUT = ROOT / "docs" / "screenshots"
#: The local operator shortcut: the console is behind it, and the screenshots sign in with it.
TOKEN = "screenshot-token"


def _feed(gw: Served, sampler: LiveSampler) -> None:
    samples = {s.trigger: s for s in build_samples(gw.runtime.engine.tables)}
    with httpx.Client(base_url=gw.base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        subscription = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "DAC Strasbourg",
            "criteria": "https://gateway.e-parcours.example/fhir/SubscriptionTopic/encounter-start",
            "channel": {
                "type": "rest-hook",
                "endpoint": "http://127.0.0.1:9/notify",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": "id-only"}]},
            },
        }
        http.post("/fhir/Subscription", json=subscription)
        for trigger in ("A03", "A12", "A40", "Z99"):
            for message in samples[trigger].messages:
                http.post("/hl7v2", content=message.encode(), headers={"Content-Type": "application/hl7-v2"})
                time.sleep(0.4)
                sampler.sample()
        broken = b"MSH|^~\\&|GAM-SANDBOX|CH-SANDBOX|GATEWAY|ARS|20261201||ADT^A99|SBX-BAD-1|P|2.5\rPID|1\r"
        http.post("/hl7v2", content=broken, headers={"Content-Type": "application/hl7-v2"})


def samples_text(gw: Served, trigger: str) -> str:
    return next(s.text for s in build_samples(gw.runtime.engine.tables) if s.trigger == trigger)


def _shot(page: Page, name: str, *, height: int = 1100) -> None:
    page.set_viewport_size({"width": 1366, "height": height})
    page.screenshot(path=str(OUT / name))
    print(OUT / name)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'g.db'}",
            mappings_dir=MAPPINGS,
            run_worker=False,
            endpoint_allowlist=["127.0.0.1"],
            api_token=TOKEN,
        )
        with serve_in_thread(settings) as gw, sync_playwright() as pw:
            sampler = LiveSampler(registries=gw.app.state.live.registries, interval=0.5)
            gw.app.state.live = sampler  # a fast sampler, so that the plots have points
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(base_url=gw.base)
            sampler.sample(force=True)
            _feed(gw, sampler)
            sampler.sample(force=True)

            page.goto("/sandbox")
            page.get_by_label("Sample messages").select_option("A03")
            page.get_by_role("button", name="Convert").click()
            page.get_by_role("heading", name="Stay timeline").wait_for()
            page.evaluate("window.scrollTo(0, 0)")
            _shot(page, "sandbox.png", height=1500)
            page.get_by_role("heading", name="Stay timeline").scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / "sandbox-timeline.png"))
            page.get_by_role("heading", name=re.compile("NdE notification orders")).scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / "sandbox-nde.png"))

            broken = samples_text(gw, "A01").replace("SBX-V1^^^", "^^^").replace("880101^^^", "^^^")
            page.get_by_label("HL7 v2 message", exact=True).fill(broken)
            page.get_by_role("button", name="Convert").click()
            page.locator("article.msg h3 .ack", has_text="AE").wait_for()
            page.locator("article.msg").first.screenshot(path=str(OUT / "sandbox-error.png"))

            page.goto("/console/messages")
            _shot(page, "sign-in.png", height=600)
            page.get_by_label("Client secret").fill(TOKEN)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Messages").wait_for()
            _shot(page, "console-messages.png", height=800)
            page.locator("table.grid tbody tr a").nth(3).click()
            _shot(page, "console-message.png", height=1000)
            page.goto("/console/subscriptions")
            _shot(page, "console-subscriptions.png", height=500)
            page.goto("/console/live")
            page.get_by_role("figure").first.wait_for()
            _shot(page, "console-live.png", height=900)
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
