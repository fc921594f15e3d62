"""Per-driver token buckets for location updates: O(1) per check, bounded memory.

A bucket idle long enough to have refilled completely is indistinguishable from a new one,
so it is evicted without changing any decision; `max_keys` bounds memory even when many
distinct ids arrive at once (the least recently used bucket goes first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_KEYS = 100_000


class RateLimiter:
    """`allow(key)` is True while `key` stays within `rate_per_s` on average, allowing
    bursts of up to `burst`. Not thread-safe: use it from one event loop."""

    __slots__ = (
        "_buckets",
        "_clock",
        "_evict_at",
        "_full_after_s",
        "burst",
        "dropped",
        "max_keys",
        "rate",
    )

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_keys >= 1")
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._full_after_s = self.burst / self.rate
        # key -> [tokens, last refill time]; ordered from least to most recently used.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        #: When to look for idle buckets next (see _evict_idle).
        self._evict_at = -math.inf
        self.dropped = 0

    def allow(self, key: str, cost: float = 1.0) -> bool:
        """Every accepted location update asks this: comparisons instead of min() (which
        parses keyword arguments), and idle buckets looked for only now and then."""
        now = self._clock()
        if now >= self._evict_at:
            self._evict_idle(now)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self.burst, now]
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                tokens = bucket[0] + elapsed * self.rate
                bucket[0] = tokens if tokens < self.burst else self.burst
            bucket[1] = now
        if bucket[0] >= cost:
            bucket[0] -= cost
            return True
        self.dropped += 1
        return False

    def _evict_idle(self, now: float) -> None:
        """Drop the buckets that have refilled completely (no decision changes). Looked for
        at most four times per refill period, not on every call (an iterator and a tuple
        each time, ~1k instructions): an idle bucket stays at most a quarter period longer,
        and `max_keys` bounds memory whatever the clock does."""
        self._evict_at = now + self._full_after_s / 4
        # Amortised O(1): each bucket is evicted at most once after being added.
        buckets = self._buckets
        while buckets:
            key, (_, last) = next(iter(buckets.items()))
            if now - last < self._full_after_s:
                return
            del buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
