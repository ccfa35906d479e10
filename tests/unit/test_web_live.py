"""The live view reads any gateway_* family of the registry: counters as rates, histograms as means."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.web.live import LiveSampler


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def _series(sampler: LiveSampler) -> dict[str, dict[str, object]]:
    return {str(s["name"]): s for s in sampler.series()}


def test_counters_become_rates_histograms_means_and_gauges_values() -> None:
    registry = CollectorRegistry()
    messages = Counter("gateway_test_messages_total", "m", ["outcome"], registry=registry)
    latency = Histogram("gateway_test_ack_seconds", "l", registry=registry)
    backlog = Gauge("gateway_test_backlog", "b", registry=registry)
    Counter("other_total", "not ours", registry=registry).inc()
    clock = Clock()
    sampler = LiveSampler(registries=[registry], interval=10, clock=clock)
    sampler.sample()
    messages.labels(outcome="AA").inc(15)
    messages.labels(outcome="AR").inc(5)
    latency.observe(0.1)
    latency.observe(0.3)
    backlog.set(7)
    clock.now += 10
    sampler.sample()

    series = _series(sampler)
    assert set(series) == {"gateway_test_messages", "gateway_test_ack_seconds", "gateway_test_backlog"}
    assert series["gateway_test_backlog"]["title"] == "b"  # the family's HELP text
    assert series["gateway_test_messages"]["points"] == [[5010.0, pytest.approx(2.0)]]
    assert series["gateway_test_ack_seconds"]["points"] == [[5010.0, pytest.approx(0.2)]]
    assert series["gateway_test_backlog"]["points"] == [[5000.0, 0.0], [5010.0, 7.0]]


def test_readings_closer_than_the_interval_are_skipped_and_an_hour_is_kept() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("gateway_test_depth", "d", registry=registry)
    clock = Clock()
    sampler = LiveSampler(registries=[registry], interval=10, horizon=60, clock=clock)
    for step in range(20):
        gauge.set(step)
        sampler.sample()
        clock.now += 5
    points = _series(sampler)["gateway_test_depth"]["points"]
    assert isinstance(points, list)
    assert len(points) == 7  # 60 s at one reading per 10 s, both ends included
    assert [p[1] for p in points] == [6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0]


def test_every_registry_metrics_serves_is_read() -> None:
    process, per_app = CollectorRegistry(), CollectorRegistry()
    Gauge("gateway_test_a", "a", registry=process).set(1)
    Gauge("gateway_test_b", "b", registry=per_app).set(2)
    sampler = LiveSampler(registries=[process, per_app], interval=1, clock=Clock())
    sampler.sample()
    assert set(_series(sampler)) == {"gateway_test_a", "gateway_test_b"}


def test_a_metric_registered_later_shows_up() -> None:
    registry = CollectorRegistry()
    sampler = LiveSampler(registries=[registry], interval=1, clock=Clock())
    sampler.sample()
    assert sampler.series() == []
    Gauge("gateway_test_new", "n", registry=registry).set(3)
    sampler.sample(force=True)
    assert _series(sampler)["gateway_test_new"]["points"][-1][1] == 3.0  # type: ignore[index]
