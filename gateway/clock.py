"""The one wall clock (aware UTC); code that tests must move in time takes it as a ``clock=`` argument."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
