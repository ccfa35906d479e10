"""The sandbox's per-client token bucket, driven by a fake clock."""

from __future__ import annotations

import pytest

from gateway.web.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_calls_wait_for_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("a") == pytest.approx(10.0)
    clock.now += 10
    assert limiter.allow("a") == 0.0
    assert limiter.allow("a") == pytest.approx(10.0)


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter(per_minute=1, burst=1, clock=Clock())
    assert limiter.allow("a") == 0.0
    assert limiter.allow("a") > 0
    assert limiter.allow("b") == 0.0


def test_a_zero_rate_turns_the_limit_off() -> None:
    limiter = RateLimiter(per_minute=0, burst=1, clock=Clock())
    assert all(limiter.allow("a") == 0.0 for _ in range(100))
