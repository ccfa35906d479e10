"""The email channel (R4 ``email``): short notices over SMTP, for professionals on a secure health mail
(MSSanté is SMTP). A notice names the topic, the event number and time, and at most the reference of what
changed: never names or clinical detail, whatever the subscription asks."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from gateway.config import Settings
from gateway.subscriptions.channels import DeliveryResult

logger = logging.getLogger(__name__)


def notice(
    *, topic_title: str, notification_type: str, events: list[tuple[int, str, str | None]], status_url: str
) -> tuple[str, str]:
    """(subject, text) for a notification; ``events`` are (number, ISO timestamp, focus URL or None)."""
    if notification_type != "event-notification":
        return f"[e-parcours] {notification_type}: {topic_title}", f"Subscription check ({notification_type}).\n"
    lines = [f"{len(events)} event(s) on topic: {topic_title}", ""]
    for number, timestamp, focus in events:
        lines.append(f"  #{number} at {timestamp}" + (f": {focus}" if focus else ""))
    lines += ["", f"Subscription status: {status_url}", "Details are available to authorised users through FHIR."]
    return f"[e-parcours] {topic_title} (#{events[-1][0]})", "\n".join(lines) + "\n"


class EmailChannel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, *, endpoint: str, subject: str, text: str, idempotency_key: str) -> DeliveryResult:
        if not self.settings.smtp_host:
            return DeliveryResult(ok=False, status_code=None, error="SMTP is not configured", retryable=True)
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = endpoint.removeprefix("mailto:")
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))  # RFC 5322 requires it; some relays refuse mail without
        message["Message-ID"] = f"<{idempotency_key.replace(':', '.')}@{self.settings.smtp_from.split('@')[-1]}>"
        message.set_content(text)
        try:
            await asyncio.to_thread(self._deliver, message)
        except (smtplib.SMTPException, OSError) as exc:
            permanent = isinstance(exc, smtplib.SMTPRecipientsRefused)
            logger.info("email delivery %s failed: %s", idempotency_key, type(exc).__name__)
            return DeliveryResult(ok=False, status_code=None, error=type(exc).__name__, retryable=not permanent)
        return DeliveryResult(ok=True, status_code=None, error=None, retryable=False)

    def _deliver(self, message: EmailMessage) -> None:
        s = self.settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.delivery_timeout) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(message)
