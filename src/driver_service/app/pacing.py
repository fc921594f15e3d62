"""A duty cycle for background maintenance that shares a resource with the hot path (the
SQLite writer thread, PostgreSQL's I/O): after each step, rest in proportion to the step's
time, so the steps take at most `share` of the time however large the backlog is, and size
the next batch so that one step holds the resource for about `step_target_s`.

The share is a floor, for a saturated hot path: given a `busy` signal (the seconds the hot
path has spent holding the resource, e.g. the location writer's time in store commits), a
step takes the hot path's busy fraction b over the time since the previous step and rests
at a share of max(share, (1 - b) * idle_share): an idle writer lets a backlog drain at
`idle_share`, a quarter-busy one at ~3/4 of it, and only a saturated one holds expiry to
`share`. A fleet that commits all the time but uses a part of the writer therefore still
expires faster than it ingests.

Plain logic over an injectable monotonic clock and sleep, so that tests check the share
and the batch sizes deterministically, without timing anything. Hand-written: the rate
limiters at hand (token buckets such as aiolimiter) cap operations per second, not the
share of time the operations take, and a step's cost varies tenfold with the load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: The default share: expiry takes at most 5 % of the writer's (or the store's) time.
DEFAULT_SHARE = 0.05
#: The time one step aims to hold the resource: an ingestion commit queued behind it waits
#: about this long at most.
STEP_TARGET_S = 0.004
#: The share while the hot path is idle (no time in commits since the previous step): each
#: step is followed by a rest as long as itself, so the resource stays free half the time (reads
#: that share it, and the event loop on a small machine) and the first commit after the
#: idle spell waits one step at most.
IDLE_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class PaceLimits:
    """Batch sizes a step may use: it starts at `first` and is resized after each step
    towards `step_target_s` of work, never below `smallest` nor above `largest`."""

    first: int = 100
    smallest: int = 50
    largest: int = 5_000
    step_target_s: float = STEP_TARGET_S


def validate_share(share: float) -> float:
    """A share is a fraction of the time: more than 0, at most 1 (1 never rests)."""
    if not 0.0 < share <= 1.0:
        raise ValueError("the share must be more than 0 and at most 1 (e.g. 0.05 for 5 %)")
    return share


class Pacer:
    """Runs steps `work(batch) -> items done` at a duty cycle of `share`: a step that took
    t seconds is followed by a rest of t * (1 - share) / share, so over any run of steps
    busy / (busy + resting) <= share. A step's time is what the resource spent on it when
    the caller can tell (`cost`: a step queued behind ingestion's commits does not hold
    the writer while it waits), else its whole wait.

    `busy` (optional) reads the seconds the hot path has spent in the resource (monotonic,
    on the same time base as `clock`): over the time since the previous step, the hot
    path's busy fraction b sets the share to max(share, (1 - b) * idle_share); without it,
    and at the first step (nothing to compare with), the hot path is taken as saturated.

    `lane` (optional) is a lock shared by the pacers of one resource (history's and the event
    log's retention on one store): each step and its rest hold it, so their steps never
    overlap and together they take at most the share, not the share each."""

    def __init__(
        self,
        share: float = DEFAULT_SHARE,
        limits: PaceLimits = PaceLimits(),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        busy: Callable[[], float] | None = None,
        idle_share: float = IDLE_SHARE,
        lane: asyncio.Lock | None = None,
    ) -> None:
        self.share = validate_share(share)
        self._lane = lane
        self.idle_share = max(self.share, validate_share(idle_share))
        self._busy = busy
        #: (clock, hot path's busy seconds) when the previous step ended (None: no step yet).
        self._seen: tuple[float, float] | None = None
        self.limits = limits
        self.batch = limits.first
        self._clock = clock
        self._sleep = sleep
        #: Seconds spent in steps, and resting after them, since this pacer was made.
        self.busy_s = 0.0
        self.rested_s = 0.0
        #: Items done by all steps.
        self.done = 0
        #: The share the last step rested at (`share` up to `idle_share`).
        self.last_share = self.share

    def rest_after(self, spent_s: float, share: float | None = None) -> float:
        """The rest that keeps a step of `spent_s` within the share (default `share`)."""
        share = self.share if share is None else share
        return max(0.0, spent_s) * (1.0 - share) / share

    def share_now(self) -> float:
        """The share for the step just taken, from the hot path's busy fraction since the
        previous step ended (its rest and this step): 1 - b of `idle_share`, never below
        `share`. The first step, or none without a signal, counts as saturated."""
        if self._busy is None:
            return self.share
        seen, self._seen = self._seen, (self._clock(), self._busy())
        if seen is None:
            return self.share
        elapsed = self._seen[0] - seen[0]
        fraction = (self._seen[1] - seen[1]) / elapsed if elapsed > 0.0 else 1.0
        free = 1.0 - min(1.0, max(0.0, fraction))
        return max(self.share, min(self.idle_share, free * self.idle_share))

    async def step(
        self, work: Callable[[int], Awaitable[int]], cost: Callable[[], float] | None = None
    ) -> int:
        """One step of at most `self.batch` items, then its rest (always awaited, so the
        event loop runs between steps even at a share of 1; at up to `idle_share` when the
        hot path left the resource free since the previous step); returns the items done.
        `cost` is a clock of the resource's own time spent (the SQLite writer thread's
        time in expiry, without the wait for it); by default the step's whole wait."""
        if self._lane is None:
            return await self._step(work, cost)
        async with self._lane:
            return await self._step(work, cost)

    async def _step(
        self, work: Callable[[int], Awaitable[int]], cost: Callable[[], float] | None
    ) -> int:
        batch = self.batch
        clock = self._clock if cost is None else cost
        started = clock()
        done = await work(batch)
        spent = clock() - started
        self.busy_s += spent
        self.done += done
        self._resize(batch, done, spent)
        self.last_share = self.share_now()
        rest = self.rest_after(spent, self.last_share)
        self.rested_s += rest
        await self._sleep(rest)
        return done

    def _resize(self, batch: int, done: int, spent_s: float) -> None:
        """A full batch tells the rate: aim the next at the target time. A short batch (the
        backlog's end) says nothing about the rate; the size stays."""
        limits = self.limits
        if done < batch or done <= 0:
            return
        if spent_s <= 0.0:
            wanted = batch * 2
        else:
            wanted = round(done * limits.step_target_s / spent_s)
            # Grow at most twice per step: one quick step (a cache hit) must not make the
            # next one hold the writer for long.
            wanted = min(wanted, batch * 2)
        self.batch = max(limits.smallest, min(limits.largest, wanted))
