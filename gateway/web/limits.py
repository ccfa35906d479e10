"""Per-client limits on the sandbox: a token bucket per client, so one integrator's loop cannot starve others.

The bucket is a pure object over an injected clock (tested without sleeping). It is per process: several
gateway instances each allow the rate, which is the intent (the limit protects the instance's CPU).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from gateway.auth.policy import Principal

#: Buckets kept at most; the least recently seen client is forgotten first (it then starts full again).
MAX_CLIENTS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``per_minute`` calls per client, in bursts of at most ``burst``; ``allow`` says when to retry."""

    def __init__(self, *, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        """0 when the call may go ahead (and is counted), else the seconds until one token is back."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            bucket = self._buckets.pop(client, None) or _Bucket(tokens=self.burst, at=now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            self._buckets[client] = bucket
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def client_key(request: Request, principal: Principal | None = None) -> str:
    """The client a limit applies to: the authenticated client when there is one, else its address.

    Not a bearer token as such: where any token is accepted (the local mode), a client could send a new one
    per call to escape the limit. A registered client (token or session) is limited as itself, wherever
    it calls from, and does not share its budget with others behind the same proxy.
    """
    if principal is not None and principal.authenticated:
        return "client:" + principal.client_id
    return "addr:" + (request.client.host if request.client else "unknown")
