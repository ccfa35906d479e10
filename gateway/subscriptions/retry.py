"""Delivery retry policy: exponential backoff with full jitter and a give-up horizon (pure, no clock)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.config import DEFAULT_RETRY_BASE, DEFAULT_RETRY_CAP, DEFAULT_RETRY_HORIZON

#: Past this exponent ``2.0 ** n`` stops being a finite float; any sane cap is reached long before.
_MAX_EXPONENT = 1023


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When to try a failed delivery again, and when to stop.

    Full jitter (``uniform(0, min(cap, base * 2**attempt))``) spreads the retries of many subscriptions
    that failed together (platform restart) instead of hammering the platform in waves. The horizon is
    long by default (a day) because e-parcours platforms may be down for a night, and a short give-up
    delay loses notifications silently (HAPI's one-minute default is the weak spot we avoid).

    The policy owns no clock and no randomness of its own: the caller passes ``now`` and a
    ``random.Random`` so that tests are deterministic.
    """

    base: float = DEFAULT_RETRY_BASE
    cap: float = DEFAULT_RETRY_CAP
    #: Seconds after the first failure after which we give up; ``None`` or ``0`` = never give up.
    horizon: float | None = DEFAULT_RETRY_HORIZON

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("retry base and cap must be >= 0")
        if self.horizon is not None and self.horizon < 0:
            raise ValueError("retry horizon must be >= 0 (0 or None = never give up)")

    @property
    def never_gives_up(self) -> bool:
        """True when the horizon is disabled (``None`` or ``0``)."""
        return not self.horizon

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the jittered delay after ``attempt`` failures (never overflows)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # 2.0 ** 1023 is finite; base * that may be inf, which min() turns back into cap.
        return min(self.cap, self.base * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before the next try; ``attempt`` = failures so far (1 = first failure)."""
        return rng.uniform(0.0, self.ceiling(attempt))

    def gives_up(self, *, first_failure_at: datetime, now: datetime) -> bool:
        """True once the horizon has elapsed since the first failure of this delivery."""
        if self.horizon is None or self.horizon == 0:
            return False
        return now - first_failure_at >= timedelta(seconds=self.horizon)

    def next_attempt(
        self, *, attempt: int, first_failure_at: datetime, now: datetime, rng: random.Random
    ) -> datetime | None:
        """When to try again, or ``None`` to give up.

        A retry that would land past the horizon is pulled back to the horizon itself, so the last
        try happens at the deadline rather than the delivery being dropped early.
        """
        if self.gives_up(first_failure_at=first_failure_at, now=now):
            return None
        at = now + timedelta(seconds=self.delay(attempt, rng))
        if self.horizon:
            deadline = first_failure_at + timedelta(seconds=self.horizon)
            at = min(at, deadline)
        return at
