"""The retention pacer (app/pacing.py) on a fake clock: the duty cycle's share and the batch
sizes are checked exactly, with no timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from driver_service.app.pacing import (
    DEFAULT_SHARE,
    IDLE_SHARE,
    PaceLimits,
    Pacer,
    validate_share,
)


class FakeTime:
    """A monotonic clock that moves only when a step works or the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def work_at(
    fake: FakeTime, per_item_s: float, backlog: list[int], fixed_s: float = 0.0
) -> tuple[Callable[[int], Awaitable[int]], list[int]]:
    """A step that does min(batch, backlog) items at `per_item_s` each (plus `fixed_s`)."""
    batches: list[int] = []

    async def work(batch: int) -> int:
        batches.append(batch)
        done = min(batch, backlog[0])
        backlog[0] -= done
        fake.now += fixed_s + done * per_item_s
        return done

    return work, batches


@pytest.mark.parametrize("share", [0.01, DEFAULT_SHARE, 0.1, 0.5, 1.0])
async def test_steps_take_at_most_the_share_of_the_time(share: float) -> None:
    fake = FakeTime()
    pacer = Pacer(share, clock=fake.clock, sleep=fake.sleep)
    backlog = [100_000]
    work, _ = work_at(fake, 20e-6, backlog, fixed_s=0.0005)
    steps = 1
    while await pacer.step(work) > 0:
        steps += 1
    assert backlog == [0]
    assert pacer.done == 100_000
    busy = pacer.busy_s
    assert busy > 0
    assert pacer.rested_s == pytest.approx(sum(fake.sleeps))
    assert busy / fake.now == pytest.approx(share)
    # Every step is followed by its rest: the event loop runs between steps, even at 1.
    assert len(fake.sleeps) == steps


async def test_each_step_is_followed_by_its_own_rest() -> None:
    fake = FakeTime()
    pacer = Pacer(0.05, PaceLimits(first=100, smallest=100, largest=100), clock=fake.clock,
                  sleep=fake.sleep)  # fmt: skip
    backlog = [1_000]
    work, batches = work_at(fake, 10e-6, backlog)
    while await pacer.step(work) > 0:
        pass
    assert batches == [100] * 11  # ten full steps and the one that finds nothing
    # A step of 100 items at 10 us is 1 ms of work, then 19 ms of rest (5 %).
    assert fake.sleeps[:10] == [pytest.approx(0.019)] * 10
    assert fake.sleeps[10] == 0.0  # the empty step cost nothing here; it still yields
    assert pacer.last_share == 0.05  # no busy signal: every step is taken as saturated


async def test_batches_aim_at_the_target_time_within_the_limits() -> None:
    fake = FakeTime()
    limits = PaceLimits(first=500, smallest=50, largest=5_000, step_target_s=0.004)
    pacer = Pacer(0.05, limits, clock=fake.clock, sleep=fake.sleep)
    backlog = [10**9]
    # 20 us an item: 200 items make the 4 ms target.
    work, batches = work_at(fake, 20e-6, backlog)
    for _ in range(5):
        await pacer.step(work)
    assert batches[0] == 500
    assert batches[1:] == [200, 200, 200, 200]
    # The store gets faster (a warm cache): the batch grows, at most twice a step.
    fast, fast_batches = work_at(fake, 0.5e-6, backlog)
    for _ in range(8):
        await pacer.step(fast)
    assert fast_batches[:4] == [200, 400, 800, 1600]
    assert max(fast_batches) == 5_000  # never above the largest
    # And slower (ingestion is busy): it shrinks at once, never below the smallest.
    slow, slow_batches = work_at(fake, 1e-3, backlog)
    for _ in range(3):
        await pacer.step(slow)
    assert slow_batches[1:] == [50, 50]
    # No step held the resource longer than the target, once sized (the first at a size
    # measured under other conditions is the exception the resize corrects).
    assert all(b * 20e-6 <= 0.004 for b in batches[1:])


async def test_the_wait_behind_the_hot_path_is_not_counted_as_the_step_s_cost() -> None:
    """With `cost` (the writer's own time in the step), a step that waited 18 ms behind an
    ingestion commit and then worked 2 ms rests 38 ms (5 % of the writer), not 380 ms, and
    its batch is sized from the 2 ms."""
    fake = FakeTime()
    busy = [0.0]
    pacer = Pacer(0.05, PaceLimits(first=100, step_target_s=0.004), clock=fake.clock,
                  sleep=fake.sleep)  # fmt: skip

    async def queued(batch: int) -> int:
        fake.now += 0.018  # waiting for the writer
        fake.now += 0.002  # the step's own work
        busy[0] += 0.002
        return batch

    assert await pacer.step(queued, lambda: busy[0]) == 100
    assert fake.sleeps == [pytest.approx(0.038)]
    assert pacer.busy_s == pytest.approx(0.002)
    assert pacer.batch == 200
    # Without it, the whole wait counts: the pace errs on the side of the hot path.
    plain = Pacer(0.05, PaceLimits(first=100), clock=fake.clock, sleep=fake.sleep)
    await plain.step(queued)
    assert fake.sleeps[-1] == pytest.approx(0.38)
    assert plain.batch == 50


async def test_a_short_batch_does_not_resize() -> None:
    fake = FakeTime()
    pacer = Pacer(0.05, PaceLimits(first=500), clock=fake.clock, sleep=fake.sleep)
    backlog = [30]
    work, _ = work_at(fake, 1.0, backlog)  # very slow, but the batch was not full
    assert await pacer.step(work) == 30
    assert pacer.batch == 500


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, float("nan")])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        validate_share(share)
    with pytest.raises(ValueError, match="share"):
        Pacer(share)


class Writer:
    """The hot path's busy signal (the location writer's `busy_s`) on the fake clock: busy
    a fraction `rate` of the time, changed by hand between steps."""

    def __init__(self, fake: FakeTime, rate: float) -> None:
        self.fake = fake
        self.rate = rate
        self.busy = 0.0
        self.since = 0.0

    def read(self) -> float:
        self.busy += (self.fake.now - self.since) * self.rate
        self.since = self.fake.now
        return self.busy

    def set_rate(self, rate: float) -> None:
        self.read()  # what it was busy so far at the old rate
        self.rate = rate


def fixed_pacer(fake: FakeTime, writer: Writer, share: float = 0.05) -> Pacer:
    """A pacer of fixed 100-item batches reading `writer` as its busy signal."""
    limits = PaceLimits(first=100, smallest=100, largest=100)
    return Pacer(share, limits, clock=fake.clock, sleep=fake.sleep, busy=writer.read)


@pytest.mark.parametrize(
    ("rate", "share", "rest_s"),
    [
        (0.0, IDLE_SHARE, 0.001),  # idle: a rest as long as the 1 ms step
        (0.25, 0.375, 0.001 * 0.625 / 0.375),  # a quarter busy: 3/4 of the idle share
        (0.95, DEFAULT_SHARE, 0.019),  # 5 % of 50 % is below the floor
        (1.0, DEFAULT_SHARE, 0.019),  # saturated: the share
    ],
)
async def test_the_share_follows_the_writer_s_free_time(
    rate: float, share: float, rest_s: float
) -> None:
    fake = FakeTime()
    pacer = fixed_pacer(fake, Writer(fake, rate))
    assert pacer.idle_share == IDLE_SHARE
    backlog = [1_000]
    work, _ = work_at(fake, 10e-6, backlog)
    while await pacer.step(work) > 0:
        pass
    assert backlog == [0]
    # The first step has nothing to compare with: the full rest (19 ms after 1 ms at 5 %);
    # every later one rests at the share the writer's busy fraction leaves.
    assert fake.sleeps[0] == pytest.approx(0.019)
    assert fake.sleeps[1:10] == [pytest.approx(rest_s)] * 9
    assert pacer.last_share == pytest.approx(share)
    # Over the steps after the first, expiry took exactly that share of the time.
    assert 0.009 / sum(fake.sleeps[1:10], 0.009) == pytest.approx(share)


async def test_a_quarter_busy_writer_that_always_commits_leaves_7_5_times_5_percent() -> None:
    """The gap this closes: commits in every rest used to keep expiry at 5 %; a writer busy
    a quarter of the time now leaves it 37.5 %, 7.5 times the old rate of expiry."""
    fake = FakeTime()
    pacer = fixed_pacer(fake, Writer(fake, 0.25))
    backlog = [10**9]
    work, _ = work_at(fake, 10e-6, backlog)
    for _ in range(101):
        await pacer.step(work)
    started = fake.sleeps[0] + 0.001  # after the first step and its rest
    rate = (pacer.done - 100) / (fake.now - started)
    assert rate == pytest.approx(0.375 / 10e-6)
    assert rate / (DEFAULT_SHARE / 10e-6) == pytest.approx(7.5)


async def test_it_switches_within_one_step_each_way() -> None:
    """The writer's load changes as a rest begins: the very next step rests accordingly."""
    fake = FakeTime()
    writer = Writer(fake, 1.0)
    rates = [1.0, 0.0, 0.0, 1.0, 0.25, 0.0, 1.0, 0.0, 0.0]  # over each step and the rest before
    rests: list[float] = []

    async def sleep(seconds: float) -> None:
        rests.append(seconds)
        if len(rests) < len(rates):
            writer.set_rate(rates[len(rests)])
        await fake.sleep(seconds)

    limits = PaceLimits(first=100, smallest=100, largest=100)
    pacer = Pacer(0.05, limits, clock=fake.clock, sleep=sleep, busy=writer.read)
    work, _ = work_at(fake, 10e-6, [1_000])
    for _ in rates:
        await pacer.step(work)
    full, idle, quarter = (pytest.approx(x) for x in (0.019, 0.001, 0.001 * 0.625 / 0.375))
    assert rests == [full, idle, idle, full, quarter, idle, full, idle, idle]


async def test_without_a_signal_every_step_takes_the_share() -> None:
    fake = FakeTime()
    pacer = Pacer(0.05, PaceLimits(first=100, smallest=100, largest=100), clock=fake.clock,
                  sleep=fake.sleep)  # fmt: skip
    work, _ = work_at(fake, 10e-6, [300])
    for _ in range(3):
        await pacer.step(work)
    assert fake.sleeps == [pytest.approx(0.019)] * 3
    assert pacer.last_share == 0.05


async def test_the_idle_share_is_never_below_the_share() -> None:
    fake = FakeTime()
    pacer = fixed_pacer(fake, Writer(fake, 0.0), share=0.8)
    assert pacer.idle_share == 0.8
    with pytest.raises(ValueError, match="more than 0"):
        Pacer(0.05, idle_share=0.0)


@pytest.mark.parametrize("shared_lane", [True, False])
async def test_pacers_sharing_a_lane_take_the_share_together(shared_lane: bool) -> None:
    """History's and the event log's retention pace one store: on a shared lane their steps
    never overlap and together they take at most the share; each on its own takes the
    share each (twice it together: the case the lane exists for). Real time, with margins
    of 2x: a loaded machine only lengthens the rests' share of the time."""
    share, step_s, steps = 0.25, 0.02, 8
    lane = asyncio.Lock() if shared_lane else None
    pacers = [Pacer(share, lane=lane), Pacer(share, lane=lane)]
    working = 0
    overlapped = False

    async def work(batch: int) -> int:
        nonlocal working, overlapped
        working += 1
        overlapped = overlapped or working > 1
        await asyncio.sleep(step_s)
        working -= 1
        return batch

    async def run(pacer: Pacer) -> None:
        for _ in range(steps):
            await pacer.step(work)

    started = time.monotonic()
    await asyncio.gather(*(run(pacer) for pacer in pacers))
    elapsed = time.monotonic() - started
    together = sum(pacer.busy_s for pacer in pacers) / elapsed
    if shared_lane:
        assert not overlapped
        assert together <= share * 1.2
    else:
        assert overlapped
        assert together > share * 1.25
