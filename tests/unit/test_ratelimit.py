"""Per-driver token buckets: rate and burst honoured, keys independent, memory bounded."""

from __future__ import annotations

from driver_service.app.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=clock)
    assert [limiter.allow("d") for _ in range(4)] == [True, True, True, False]
    clock.now = 0.5  # one token back
    assert [limiter.allow("d") for _ in range(2)] == [True, False]
    assert limiter.dropped == 2


def test_drivers_do_not_share_buckets() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, clock=Clock())
    assert limiter.allow("a")
    assert limiter.allow("b")
    assert not limiter.allow("a")


def test_idle_buckets_are_evicted_without_changing_decisions() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=10, burst=5, clock=clock)
    for i in range(1000):
        limiter.allow(f"d{i}")
    assert len(limiter) == 1000
    clock.now = 1.0  # 0.5 s refills a bucket fully: all are idle now
    assert limiter.allow("new")
    assert len(limiter) == 1


def test_memory_is_bounded_by_max_keys() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, max_keys=100, clock=Clock())
    for i in range(10_000):
        limiter.allow(f"d{i}")
    assert len(limiter) == 100
