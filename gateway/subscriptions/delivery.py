"""Channels by registry: one class per ``Subscription.channel.type``, as hapi-fhir has one deliverer each.

The worker claims rows, builds the notification Bundle (common to every channel), then hands it to the
subscription's channel twice: :meth:`Channel.build` turns it into what this channel sends (the signed
JSON body; a short mail notice), outside any transaction, and :meth:`Channel.send` sends it. A new
channel (or a payload dialect, such as the ANS "Notification d'Événements" one) is one class added to
:func:`channels`; the worker does not change.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from gateway.config import Settings
from gateway.db.repo import SubscriptionRecord
from gateway.subscriptions import nde_order
from gateway.subscriptions.channels import DeliveryResult, RestHookChannel
from gateway.subscriptions.email import EmailChannel
from gateway.subscriptions.email import notice as notice_text
from gateway.subscriptions.endpoints import vet_endpoint
from gateway.subscriptions.notification import NotificationEvent
from gateway.subscriptions.topics import BY_URL

JSON = dict[str, Any]
DEFAULT_CHANNEL = "rest-hook"


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """One notification to send, as every channel sees it."""

    subscription: SubscriptionRecord
    notification_type: str
    events: list[NotificationEvent]
    bundle: JSON
    base_url: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What a channel built for one notification: a request body, or a mail subject and text."""

    body: bytes = b""
    subject: str = ""
    text: str = ""


class Channel(Protocol):
    def build(self, notice: Notice) -> Outgoing: ...

    async def send(self, sub: SubscriptionRecord, outgoing: Outgoing, *, key: str) -> DeliveryResult: ...


class RestHook:
    """``rest-hook``: the Bundle (or an ANS NdE flux 4 order, POSTed to ``{endpoint}/CommunicationRequest``)
    as signed JSON, POSTed to an endpoint checked again before every send
    (the connection goes to the address vetted then: no second resolution that DNS rebinding could change)."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, *, executor: Executor | None = None) -> None:
        self.client, self.settings = client, settings
        #: where the endpoint check (a DNS resolution) runs: the worker's threads, not the loop's default pool
        self.executor = executor
        self.default = RestHookChannel(client, timeout=settings.delivery_timeout)

    def build(self, notice: Notice) -> Outgoing:
        return Outgoing(body=orjson.dumps(notice.bundle))

    async def send(self, sub: SubscriptionRecord, outgoing: Outgoing, *, key: str) -> DeliveryResult:
        check = functools.partial(vet_endpoint, sub.endpoint, allowlist=self.settings.endpoint_allowlist)
        vetted = await asyncio.get_running_loop().run_in_executor(self.executor, check)
        if vetted.refusal:
            # DNS can change after registration: the endpoint is checked again before every send.
            error = f"endpoint refused: {vetted.refusal}"
            return DeliveryResult(ok=False, status_code=None, error=error, retryable=False)
        channel = self.default if not sub.timeout else RestHookChannel(self.client, timeout=float(sub.timeout))
        result = await channel.send(
            endpoint=nde_order.target(sub),  # the same host as sub.endpoint: the vetted address holds
            body=outgoing.body,
            headers=sub.headers,
            secret=sub.secret,
            idempotency_key=key,
            address=vetted.address,
        )
        return nde_order.judge(sub, result)  # ANS NdE flux 4 succeeds on 201 only


class Email:
    """``email``: a short notice naming the topic and events, never clinical content (see ``email.py``)."""

    def __init__(self, settings: Settings) -> None:
        self.mailer = EmailChannel(settings)

    def build(self, notice: Notice) -> Outgoing:
        sub, base = notice.subscription, notice.base_url
        topic = BY_URL.get(sub.topic)
        subject, text = notice_text(
            topic_title=topic.title if topic else sub.topic,
            notification_type=notice.notification_type,
            events=[
                (
                    e.event_number,
                    e.timestamp.isoformat(),
                    f"{base}/{e.focus_reference}" if sub.payload_content == "id-only" else None,
                )
                for e in notice.events
            ],
            status_url=f"{base}/Subscription/{sub.id}/$status",
        )
        return Outgoing(subject=subject, text=text)

    async def send(self, sub: SubscriptionRecord, outgoing: Outgoing, *, key: str) -> DeliveryResult:
        return await self.mailer.send(
            endpoint=sub.endpoint, subject=outgoing.subject, text=outgoing.text, idempotency_key=key
        )


def channels(settings: Settings, client: httpx.AsyncClient, *, executor: Executor | None = None) -> dict[str, Channel]:
    """The registry: ``channel.type`` → its channel (``rest-hook`` also serves any type not listed)."""
    return {DEFAULT_CHANNEL: RestHook(client, settings, executor=executor), "email": Email(settings)}
