"""Prometheus metrics: what they are called, and the one-line calls the hot paths make.

Names follow the Prometheus conventions (``_total`` counters, ``_seconds`` durations, base units). Labels
never carry patient data: transports, outcomes, triggers, sending facilities (MSH-4), topics, channel
types and subscription ids only. Label values that come from a message (trigger, sender) are cleaned
and bounded, so that a hostile feed cannot blow up the number of series.

Store-level gauges (outbox backlog, oldest pending age, subscriptions by status, connection pool) are
read from the database at scrape time by :class:`StoreCollector`, and the MLLP listener's and delivery
worker's own counters from those objects by :class:`ServiceCollector`; both are registered per
application on its own registry, so several apps in one process (the tests) do not collide.

With ``gateway serve --workers N`` (N > 1) a scrape lands on any one worker, so each worker's metrics
must reach every other's answer: the workers run in prometheus_client's multiprocess mode (the parent
sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory), their counters and histograms are files there,
summed at scrape time by :func:`aggregated_registry`. The MLLP listener's and delivery worker's ints are
copied into such counters labelled ``worker`` by :class:`ServiceMirror`. What cannot be summed is either
left out (``process_*``, ``python_*``: one process's) or labelled with the ``worker`` that answered (the
connection pool gauges).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

#: The directory of prometheus_client's multiprocess mode (read by the library at import).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between two copies of a worker's MLLP and delivery counts into the shared files.
MIRROR_INTERVAL = 0.5
#: Latency buckets for work measured in milliseconds to seconds (ACKs, commits, deliveries).
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_LABEL_VALUES = 200
OTHER = "other"

MESSAGES = Counter(
    "gateway_messages_total",
    "HL7 v2 messages acknowledged, by transport, ACK code (outcome), trigger event and sending facility",
    ["transport", "outcome", "trigger", "sender"],
)
ACK_LATENCY = Histogram(
    "gateway_ack_latency_seconds",
    "Time from a message's arrival to its ACK being ready",
    ["transport"],
    buckets=FAST_BUCKETS,
)
FOLD_SECONDS = Histogram(
    "gateway_fold_duration_seconds", "Time to fold a message's facts into resources", buckets=FAST_BUCKETS
)
COMMIT_SECONDS = Histogram(
    "gateway_commit_duration_seconds", "Time to commit an ingest transaction", buckets=FAST_BUCKETS
)
DELIVERY_ATTEMPTS = Counter(
    "gateway_delivery_attempts_total",
    "Notification deliveries tried, by channel type, notification type and result (ok | failed)",
    ["channel", "type", "result"],
)
DELIVERY_FAILURES = Counter(
    "gateway_delivery_failures_total", "Notification deliveries that failed, by channel type", ["channel"]
)
DELIVERY_LATENCY = Histogram(
    "gateway_delivery_duration_seconds",
    "Time for one notification request (or e-mail) to be answered",
    ["channel"],
    buckets=FAST_BUCKETS,
)
HTTP_REQUESTS = Histogram(
    "gateway_http_request_duration_seconds",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
    buckets=FAST_BUCKETS,
)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_seen: dict[str, set[str]] = {}
_seen_lock = threading.Lock()


def bounded(kind: str, value: str) -> str:
    """A label value from outside: cleaned, cut, and ``other`` past the first 200 distinct values."""
    clean = _SAFE.sub("_", value)[:32] or "none"
    with _seen_lock:
        values = _seen.setdefault(kind, set())
        if clean in values:
            return clean
        if len(values) >= MAX_LABEL_VALUES:
            return OTHER
        values.add(clean)
        return clean


def _ack_header(ack: bytes) -> tuple[str, str]:
    """(trigger, sending facility) from an ACK's MSH: it echoes the original MSH-4 and MSH-9.2."""
    first = ack.split(b"\r", 1)[0].decode("latin-1", errors="replace")
    if not first.startswith("MSH") or len(first) < 8:
        return "", ""
    sep, component = first[3], first[4]
    fields = first.split(sep)
    facility = fields[5].split(component)[0] if len(fields) > 5 else ""
    trigger = fields[8].split(component)[1] if len(fields) > 8 and component in fields[8] else ""
    return trigger, facility


def record_message(*, transport: str, outcome: str, ack: bytes, seconds: float | None = None) -> None:
    """Count one acknowledged message (and its ACK latency): the one call every ingest edge makes."""
    trigger, sender = _ack_header(ack)
    MESSAGES.labels(
        transport=transport,
        outcome=outcome,
        trigger=bounded("trigger", trigger),
        sender=bounded("sender", sender),
    ).inc()
    if seconds is not None:
        ACK_LATENCY.labels(transport=transport).observe(seconds)


def record_delivery(*, channel: str, notification_type: str, ok: bool, seconds: float) -> None:
    DELIVERY_ATTEMPTS.labels(channel=channel, type=notification_type, result="ok" if ok else "failed").inc()
    DELIVERY_LATENCY.labels(channel=channel).observe(seconds)
    if not ok:
        DELIVERY_FAILURES.labels(channel=channel).inc()


@contextmanager
def timed(histogram: Histogram) -> Iterator[None]:
    """``with timed(COMMIT_SECONDS):`` around a block (a thin name for ``Histogram.time``)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - started)


#: (subscription id, pending rows, oldest pending occurred_at) for each subscription with a backlog.
Backlog = list[tuple[str, int, datetime]]


class StoreCollector(Collector):
    """Gauges read at scrape time: outbox backlog per subscription, subscriptions by status, the pool.

    ``read`` returns (backlog, {status: count}); ``pool`` returns {"size", "checked_out", "overflow"}.
    Both come from ``gateway/db`` (no SQL here). A database that cannot be read gives no store gauges,
    not a failed scrape: the process metrics still matter then.
    """

    def __init__(
        self,
        read: Callable[[], tuple[Backlog, dict[str, int]]],
        pool: Callable[[], dict[str, int]],
        *,
        clock: Callable[[], datetime] | None = None,
        worker: str | None = None,
    ) -> None:
        self.read, self.pool, self.clock = read, pool, clock or (lambda: datetime.now(UTC))
        #: with several workers, the pool gauges are the answering worker's: labelled so
        self.worker = worker

    def collect(self) -> Iterable[Metric]:
        yield from self._pool()
        try:
            backlog, statuses = self.read()
        except Exception:
            return
        now = self.clock()
        pending = GaugeMetricFamily(
            "gateway_outbox_pending", "Notifications waiting in the outbox, per subscription", labels=["subscription"]
        )
        oldest = GaugeMetricFamily(
            "gateway_outbox_oldest_pending_age_seconds",
            "Age of the oldest notification waiting, per subscription",
            labels=["subscription"],
        )
        for sub_id, count, since in backlog:
            pending.add_metric([sub_id], count)
            oldest.add_metric([sub_id], max(0.0, (now - since).total_seconds()))
        subs = GaugeMetricFamily("gateway_subscriptions", "Subscriptions by status", labels=["status"])
        for status in ("requested", "active", "error", "off"):
            subs.add_metric([status], statuses.get(status, 0))
        yield from (pending, oldest, subs)

    def _pool(self) -> Iterable[Metric]:
        figures = self.pool()
        if not figures:
            return
        for name, help_text in (
            ("size", "Connections the database pool keeps"),
            ("checked_out", "Database connections in use"),
            ("overflow", "Connections opened beyond the pool size"),
        ):
            if self.worker is None:
                yield GaugeMetricFamily(f"gateway_db_pool_{name}", help_text, value=figures.get(name, 0))
                continue
            gauge = GaugeMetricFamily(
                f"gateway_db_pool_{name}", f"{help_text} (of the worker answering this scrape)", labels=["worker"]
            )
            gauge.add_metric([self.worker], figures.get(name, 0))
            yield gauge


class MLLPCounters(Protocol):
    """What :class:`ServiceCollector` reads of the MLLP listener (``gateway.hl7.mllp.MLLPServer``)."""

    connections_total: int
    refused_total: int
    messages_total: int
    oversize_total: int
    timed_out_total: int


class WorkerCounters(Protocol):
    """What :class:`ServiceCollector` reads of the delivery worker (``gateway.subscriptions.worker``)."""

    delivered_total: int


#: (metric name without ``_total``, help, attribute) of the MLLP listener's counters.
MLLP_COUNTERS = (
    ("gateway_mllp_connections", "MLLP connections accepted", "connections_total"),
    ("gateway_mllp_connections_refused", "MLLP connections refused (global or per-peer cap)", "refused_total"),
    ("gateway_mllp_frames", "MLLP frames received and handed to the ingest", "messages_total"),
    ("gateway_mllp_oversize_frames", "MLLP frames over the size limit (AR, then close)", "oversize_total"),
    ("gateway_mllp_timeouts", "MLLP connections closed by the idle or frame deadline", "timed_out_total"),
)


class ServiceCollector(Collector):
    """The MLLP listener's and delivery worker's counters, read from them at scrape time.

    They are plain ints on their objects (each server or worker counts its own, which the tests read);
    this collector is what takes them to ``/metrics``. No MLLP listener (``start(mllp=False)``) gives no
    MLLP series.
    """

    def __init__(self, *, mllp: Callable[[], MLLPCounters | None], worker: Callable[[], WorkerCounters | None]) -> None:
        self.mllp, self.worker = mllp, worker

    def collect(self) -> Iterable[Metric]:
        server = self.mllp()
        if server is not None:
            for name, help_text, attribute in MLLP_COUNTERS:
                yield CounterMetricFamily(name, help_text, value=getattr(server, attribute))
        worker = self.worker()
        if worker is not None:
            yield CounterMetricFamily("gateway_outbox_rows_delivered", DELIVERED_HELP, value=worker.delivered_total)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when this process is one of ``gateway serve --workers``' workers."""
    return os.environ.get(MULTIPROC_ENV) or None


def aggregated_registry() -> CollectorRegistry:
    """Every worker's counters and histograms, summed from the multiprocess directory at each collect."""
    if multiprocess_dir() is None:
        raise RuntimeError(f"{MULTIPROC_ENV} is not set: this process is not one of several workers")
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


#: Help of the delivery worker's counter (also :class:`ServiceCollector`'s).
DELIVERED_HELP = "Outbox rows (events, handshakes, heartbeats) delivered by this process's worker"


class ServiceMirror:
    """One worker's MLLP listener and delivery counts, copied into multiprocess counters labelled ``worker``.

    They are plain ints on their objects (see :class:`ServiceCollector`), invisible to another worker; the
    copy every :data:`MIRROR_INTERVAL` puts them in the shared files, so a scrape answered by any worker shows
    every worker's (at most that late; ``sum without (worker)`` is the gateway's). A restarted worker keeps
    its index: its counter goes on from its predecessor's (the files of dead processes are still summed).
    """

    def __init__(
        self, *, worker: str, mllp: Callable[[], MLLPCounters | None], delivery: Callable[[], WorkerCounters | None]
    ) -> None:
        self.worker, self.mllp, self.delivery = worker, mllp, delivery
        self._mllp = {
            attribute: Counter(name, help_text, ["worker"], registry=None).labels(worker=worker)
            for name, help_text, attribute in MLLP_COUNTERS
        }
        self._delivered = Counter(
            "gateway_outbox_rows_delivered",
            DELIVERED_HELP.replace("this process's", "each worker's"),
            ["worker"],
            registry=None,
        ).labels(worker=worker)
        self._seen: dict[str, int] = dict.fromkeys([*self._mllp, "delivered_total"], 0)

    def sync(self) -> None:
        server = self.mllp()
        if server is not None:
            for attribute, counter in self._mllp.items():
                self._add(attribute, counter, getattr(server, attribute))
        worker = self.delivery()
        if worker is not None:
            self._add("delivered_total", self._delivered, worker.delivered_total)

    def _add(self, attribute: str, counter: Counter, value: int) -> None:
        if value > self._seen[attribute]:
            counter.inc(value - self._seen[attribute])
            self._seen[attribute] = value

    async def run(self, interval: float = MIRROR_INTERVAL) -> None:
        """Copy until cancelled, and once more then: what the last moments counted is not lost."""
        try:
            while True:
                await asyncio.sleep(interval)
                self.sync()
        finally:
            self.sync()
