"""Per-requester token buckets, so one identity cannot drain a KGC node.

Each requester gets a bucket of ``capacity`` tokens that refills continuously at ``capacity``
tokens per ``period`` seconds; a request takes one token or is refused. The clock is injected
(seconds, monotonic) so tests move time by hand instead of sleeping.

What this module must not do: sleep, read a wall clock by itself, or grow without bound (idle
buckets that have refilled completely are forgotten: a full bucket and a missing one are the
same thing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["TokenBucketLimiter"]


class TokenBucketLimiter:
    """Token buckets keyed by requester. Thread-safe."""

    def __init__(
        self,
        capacity: int,
        *,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"rate limit must allow at least 1 request, got {capacity}")
        if period <= 0:
            raise ValueError(f"rate-limit period must be positive, got {period}")
        self.capacity = capacity
        self._rate = capacity / period
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # requester -> (tokens, at)
        self._lock = threading.Lock()

    def try_acquire(self, requester: str) -> bool:
        """Take one token for ``requester``; False when the bucket is empty."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(requester, (float(self.capacity), now))
            tokens = min(float(self.capacity), tokens + max(0.0, now - at) * self._rate)
            if tokens < 1.0:
                self._buckets[requester] = (tokens, now)
                return False
            self._buckets[requester] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:
                self._forget_full(now)
            return True

    def retry_after(self, requester: str) -> float:
        """Seconds until ``requester`` has a token again (0 when it has one now)."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(requester, (float(self.capacity), now))
        tokens = min(float(self.capacity), tokens + max(0.0, now - at) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def _forget_full(self, now: float) -> None:
        full = [
            who
            for who, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self._rate >= self.capacity
        ]
        for who in full:
            del self._buckets[who]
