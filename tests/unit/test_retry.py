"""RetryPolicy: full-jitter bounds, cap, horizon, determinism."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from gateway.subscriptions.retry import RetryPolicy

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 8, 9, 10, 20])
def test_delay_within_full_jitter_bounds(attempt: int) -> None:
    policy = RetryPolicy(base=1.0, cap=600.0)
    rng = random.Random(attempt)
    upper = min(600.0, 1.0 * 2**attempt)
    delays = [policy.delay(attempt, rng) for _ in range(500)]
    assert all(0.0 <= d <= upper for d in delays)
    # Full jitter really spreads over the whole range, not just near the top.
    assert min(delays) < upper * 0.1
    assert max(delays) > upper * 0.9


def test_cap_respected() -> None:
    policy = RetryPolicy(base=2.0, cap=30.0)
    rng = random.Random(1)
    assert policy.ceiling(10) == 30.0
    assert all(policy.delay(a, rng) <= 30.0 for a in range(1, 200))


def test_never_negative_even_with_zero_base() -> None:
    rng = random.Random(2)
    assert all(RetryPolicy(base=0.0).delay(a, rng) == 0.0 for a in range(5))
    assert all(RetryPolicy().delay(a, rng) >= 0.0 for a in range(100))


def test_no_overflow_for_huge_attempt() -> None:
    policy = RetryPolicy(base=1.0, cap=600.0)
    assert policy.ceiling(10_000) == 600.0
    assert 0.0 <= policy.delay(10_000, random.Random(3)) <= 600.0
    assert RetryPolicy(base=1e300, cap=1e308).ceiling(10_000) == 1e308


def test_deterministic_with_seeded_rng() -> None:
    policy = RetryPolicy()
    first = [policy.delay(a, random.Random(42)) for a in range(1, 12)]
    second = [policy.delay(a, random.Random(42)) for a in range(1, 12)]
    assert first == second


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(base=-1.0)
    with pytest.raises(ValueError):
        RetryPolicy(horizon=-5.0)
    with pytest.raises(ValueError):
        RetryPolicy().delay(-1, random.Random(0))


def test_gives_up_after_horizon() -> None:
    policy = RetryPolicy(horizon=3600.0)
    assert not policy.gives_up(first_failure_at=T0, now=T0 + timedelta(seconds=3599))
    assert policy.gives_up(first_failure_at=T0, now=T0 + timedelta(seconds=3600))
    assert (
        policy.next_attempt(attempt=9, first_failure_at=T0, now=T0 + timedelta(hours=2), rng=random.Random(0)) is None
    )


@pytest.mark.parametrize("horizon", [None, 0, 0.0])
def test_disabled_horizon_never_gives_up(horizon: float | None) -> None:
    policy = RetryPolicy(horizon=horizon)
    later = T0 + timedelta(days=3650)
    assert policy.never_gives_up
    assert not policy.gives_up(first_failure_at=T0, now=later)
    nxt = policy.next_attempt(attempt=10_000, first_failure_at=T0, now=later, rng=random.Random(0))
    assert nxt is not None
    assert later <= nxt <= later + timedelta(seconds=600)


def test_next_attempt_is_now_plus_delay() -> None:
    policy = RetryPolicy(base=1.0, cap=600.0)
    now = T0 + timedelta(seconds=10)
    nxt = policy.next_attempt(attempt=3, first_failure_at=T0, now=now, rng=random.Random(7))
    expected = now + timedelta(seconds=policy.delay(3, random.Random(7)))
    assert nxt == expected
    assert now <= nxt <= now + timedelta(seconds=8)


def test_next_attempt_clamped_to_horizon() -> None:
    """The last try happens at the deadline instead of the delivery being dropped early."""
    policy = RetryPolicy(base=1000.0, cap=1000.0, horizon=100.0)
    now = T0 + timedelta(seconds=99)
    for seed in range(50):
        nxt = policy.next_attempt(attempt=5, first_failure_at=T0, now=now, rng=random.Random(seed))
        assert nxt is not None
        assert now <= nxt <= T0 + timedelta(seconds=100)
