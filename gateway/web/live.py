"""The console's live view: the figures ``/metrics`` exposes, sampled from the Prometheus registry.

Every ``gateway_*`` family shows up on its own, so metrics added later appear without touching this
module: counters as a rate per second, gauges as their value, histograms and summaries as the mean
over the sampling interval (Δsum / Δcount: the latency of what happened in that interval). Samples are
kept for an hour in memory (per process).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

PREFIX = "gateway_"
DEFAULT_INTERVAL = 10.0
DEFAULT_HORIZON = 3600.0


@dataclass(frozen=True, slots=True)
class Reading:
    """The registry at one moment: per family, its type and (for histograms) sum and count."""

    at: float
    kinds: dict[str, str]
    docs: dict[str, str]
    values: dict[str, float]
    counts: dict[str, float]


def read_registry(registries: Sequence[CollectorRegistry], *, at: float) -> Reading:
    """One reading of every registry ``/metrics`` serves (the process-wide one, and any per-app one)."""
    kinds: dict[str, str] = {}
    docs: dict[str, str] = {}
    values: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in (f for registry in registries for f in registry.collect()):
        if not family.name.startswith(PREFIX):
            continue
        kinds[family.name] = family.type
        docs[family.name] = family.documentation
        for sample in family.samples:
            if family.type in {"histogram", "summary"}:
                if sample.name.endswith("_sum"):
                    values[family.name] = values.get(family.name, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    counts[family.name] = counts.get(family.name, 0.0) + sample.value
            elif _plotted(family.type, family.name, sample.name):
                values[family.name] = values.get(family.name, 0.0) + sample.value
    return Reading(at=at, kinds=kinds, docs=docs, values=values, counts=counts)


def _plotted(kind: str, family: str, sample: str) -> bool:
    """A counter's ``_total`` sample (not ``_created``); a gauge's (or untyped) own sample."""
    if kind == "counter":
        return sample.endswith("_total")
    return sample == family


def point(prev: Reading, cur: Reading, name: str) -> float | None:
    """The plotted value of family ``name`` between two readings (None when it cannot be told yet)."""
    kind = cur.kinds.get(name)
    elapsed = cur.at - prev.at
    if kind == "counter":
        if name not in prev.kinds or elapsed <= 0:
            return None
        return max(0.0, cur.values.get(name, 0.0) - prev.values.get(name, 0.0)) / elapsed
    if kind in {"histogram", "summary"}:
        done = cur.counts.get(name, 0.0) - prev.counts.get(name, 0.0)
        if done <= 0:
            return None
        return (cur.values.get(name, 0.0) - prev.values.get(name, 0.0)) / done
    return cur.values.get(name)


#: Shown first, in this order, when present: the figures an operator watches (ingest rate, ACK latency,
#: notification latency, outbox backlog); every other gateway_* family follows by name.
FEATURED = (
    "gateway_messages",
    "gateway_ack_latency_seconds",
    "gateway_delivery_duration_seconds",
    "gateway_outbox_pending",
    "gateway_outbox_oldest_pending_age_seconds",
)
UNITS = {"counter": "per second", "histogram": "mean over interval", "summary": "mean over interval"}


class LiveSampler:
    """Readings every ``interval`` seconds for ``horizon`` seconds; ``series()`` turns them into plots."""

    def __init__(
        self,
        *,
        registries: Sequence[CollectorRegistry] = (REGISTRY,),
        interval: float = DEFAULT_INTERVAL,
        horizon: float = DEFAULT_HORIZON,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registries = tuple(registries)
        self.interval = interval
        self.clock = clock
        self._readings: deque[Reading] = deque(maxlen=max(2, int(horizon / interval) + 1))
        self._lock = threading.Lock()
        self._stopped = asyncio.Event()

    def sample(self, *, force: bool = False) -> None:
        """Take a reading unless the last one is younger than the interval (pages may poll more often)."""
        now = self.clock()
        with self._lock:
            if not force and self._readings and now - self._readings[-1].at < self.interval:
                return
            self._readings.append(read_registry(self.registries, at=now))

    def series(self) -> list[dict[str, Any]]:
        with self._lock:
            readings = list(self._readings)
        if not readings:
            return []
        names = sorted(readings[-1].kinds, key=lambda n: (FEATURED.index(n) if n in FEATURED else len(FEATURED), n))
        out: list[dict[str, Any]] = []
        for name in names:
            kind = readings[-1].kinds[name]
            if kind in UNITS:
                pairs = ((cur.at, point(prev, cur, name)) for prev, cur in itertools.pairwise(readings))
                points = [[at, value] for at, value in pairs if value is not None]
            else:
                points = [[r.at, r.values[name]] for r in readings if name in r.values]
            title = readings[-1].docs.get(name) or name
            out.append({"name": name, "title": title, "kind": kind, "unit": UNITS.get(kind, "value"), "points": points})
        return out

    async def run(self) -> None:
        """Sample until :meth:`stop`; started with the gateway's services."""
        while not self._stopped.is_set():
            await asyncio.to_thread(self.sample, force=True)
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=self.interval)
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stopped.set()
