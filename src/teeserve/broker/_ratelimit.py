"""Per-peer token buckets: bounded attestation work per client address (pure; the clock is injected)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allow ``burst`` attempts at once per peer, refilled at ``rate`` per second.

    Idle peers are forgotten once their bucket is full again, so the table stays bounded by the number
    of recently active peers (and by ``max_peers``; beyond it the oldest entries are dropped).
    """

    def __init__(self, rate: float, burst: int, *, max_peers: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, last time)
        self._lock = threading.Lock()

    def allow(self, peer: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(peer, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[peer] = (tokens, now)
                return False
            self._buckets[peer] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_peers:
                self._expire(now)
            return True

    def _expire(self, now: float) -> None:
        full = [p for p, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for p in full:
            del self._buckets[p]
        while len(self._buckets) > self.max_peers:
            del self._buckets[next(iter(self._buckets))]
