"""The channel registry: each ``channel.type`` has its own class; what each builds is its own business."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson

from gateway.config import Settings
from gateway.db.repo import SubscriptionRecord
from gateway.subscriptions.delivery import DEFAULT_CHANNEL, Email, Notice, RestHook, channels
from gateway.subscriptions.notification import NotificationEvent

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def record(channel_type: str) -> SubscriptionRecord:
    return SubscriptionRecord(
        id="sub-1", status="active", topic="http://example.org/topic", endpoint="mailto:x@example.org",
        channel_type=channel_type, payload_content="id-only", headers=[], filters=[], secret="s" * 32,
        events_since_start=3, error=None, created_at=NOW,
    )  # fmt: skip


def notice(channel_type: str) -> Notice:
    event = NotificationEvent(
        event_number=3, timestamp=NOW, focus_reference="Encounter/e1", focus_resource=None, additional_context=()
    )
    bundle = {"resourceType": "Bundle", "id": "b1"}
    return Notice(
        subscription=record(channel_type), notification_type="event-notification", events=[event], bundle=bundle,
        base_url="https://gw.example/fhir",
    )  # fmt: skip


def test_each_channel_type_has_its_class() -> None:
    registry = channels(Settings(), httpx.AsyncClient())
    assert isinstance(registry[DEFAULT_CHANNEL], RestHook)
    assert isinstance(registry["email"], Email)


def test_rest_hook_sends_the_bundle_and_email_a_notice_without_it() -> None:
    registry = channels(Settings(), httpx.AsyncClient())
    body = registry["rest-hook"].build(notice("rest-hook"))
    assert orjson.loads(body.body) == {"resourceType": "Bundle", "id": "b1"} and not body.subject
    mail = registry["email"].build(notice("email"))
    assert mail.body == b"" and "#3" in mail.subject
    assert "https://gw.example/fhir/Encounter/e1" in mail.text
