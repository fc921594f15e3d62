"""EventFeed: WatchEvents' replay and live follow over the event log, with no gap and no
duplicate at the hand-over and no buffer per watcher.

One shared ring holds the newest events. This process's store hands over the events each
commit logged (`notify`, called after the commit): when they directly follow the ring's
head (the first id is the head + 1) they are appended as they are, with no read of the log.
Otherwise (ids a rolled-back transaction used, other replicas' events on PostgreSQL, a
hand-over that came late or not at all) a follower task (supervised, restarted on failure)
reads the log by id after the head, as it also does at least every `poll_s`. Either way the
watchers are woken. Event ids are assigned in commit order (see the stores), so reading by
id never skips an event that commits late, and events that follow the head are all the log
holds up to their last id.

A watcher keeps only a cursor, the id of the last event it has looked at. Each turn it takes
the events after its cursor from the ring if the ring still reaches back to it, or else
from the log (a page at a time), and moves its cursor past every event it looked at (sent or
filtered out). Replay and follow are the same loop, so the hand-over is seamless by
construction. A slow watcher holds nothing up: the follower never waits for it, and once
the ring has moved past its cursor it reads the log until it catches up.

A replay from an id the log's retention has removed fails with EventsExpired (OUT_OF_RANGE)
rather than skip events, at the start and whenever a read of the log finds a gap after the
cursor that the retention made. EventRetention removes expired events off the hot path.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from driver_service.app.pacing import DEFAULT_SHARE, Pacer
from driver_service.domain.errors import EventsExpired
from driver_service.domain.events import LoggedEvent
from driver_service.ports import EventLog
from driver_service.resilience.failure_log import FailureLog
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor

log = logging.getLogger(__name__)

#: Events kept in memory for watchers that follow closely.
DEFAULT_RING_SIZE = 10_000
#: Events per read of the log.
PAGE = 500

Match = Callable[[LoggedEvent], bool]


class EventFeed:
    """Replay-then-follow over an EventLog for any number of watchers."""

    def __init__(
        self,
        log: EventLog,
        supervisor: TaskSupervisor,
        poll_s: float = 0.1,
        ring_size: int = DEFAULT_RING_SIZE,
    ) -> None:
        self._log = log
        self._supervisor = supervisor
        self._poll_s = poll_s
        self._ring_size = ring_size
        self._ring: list[LoggedEvent] = []
        self._ids: list[int] = []
        #: The ring holds every event with ring_from < id <= head.
        self._ring_from = 0
        self._head = 0
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self._task: Supervised | None = None
        self._closed = False
        #: See `empty_ring_when`.
        self._epoch: Callable[[], int] | None = None
        self._epoch_seen = 0

    @property
    def head(self) -> int:
        """The newest event id this process has read from the log."""
        return self._head

    async def start(self) -> None:
        self._head = self._ring_from = await self._log.last_event_id()
        self._task = self._supervisor.start("event-feed", self._follow, Policy.RESTART)

    def notify(self, events: Sequence[LoggedEvent]) -> None:
        """The store committed `events` (in this event loop's thread): appended if they
        follow the head, else the follower reads the log (a page it has in flight may
        then return some of them: it keeps only what follows the head)."""
        if events[0].event_id == self._head + 1:
            self._append(events)
        elif events[-1].event_id > self._head:
            self._wake.set()

    async def _follow(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a stop that lands as the wake-up
            # completes is swallowed by wait_for, and the feed would run on past close().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            self._wake.clear()
            while True:
                events = await self._log.read_events(self._head, PAGE)
                head = self._head  # moved meanwhile if events were handed over
                fresh = (
                    events
                    if not events or events[0].event_id > head
                    else [e for e in events if e.event_id > head]
                )
                if fresh:
                    self._append(fresh)
                if len(events) < PAGE:
                    break

    def _append(self, events: Sequence[LoggedEvent]) -> None:
        self._ring.extend(events)
        self._ids.extend(e.event_id for e in events)
        self._head = events[-1].event_id
        excess = len(self._ring) - self._ring_size
        if excess > 0:
            self._ring_from = self._ids[excess - 1]
            del self._ring[:excess]
            del self._ids[:excess]
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def last_event_id(self) -> int:
        return max(self._head, await self._log.last_event_id())

    async def forget(self, driver_id: str) -> int:
        """Erasure: drop the driver's events from the ring (`drop_driver`). Returns 0: these
        are copies of logged events, which the store's erasure counts."""
        self.drop_driver(driver_id)
        return 0

    def drop_driver(self, driver_id: str) -> None:
        """Drop the driver's events from the ring (their positions must not stay in memory
        once the log has forgotten them): this process's erasure, or another replica's
        (adapters/redis/erasure_broadcast.py). Watchers following from the ring then see
        what a reader of the log sees: the ring holds every event after `ring_from` that the
        log still holds, a cursor's place is found by id, and a cursor with nothing after it
        in the ring moves up to the head."""
        kept = [event for event in self._ring if event.event.driver_id != driver_id]
        if len(kept) < len(self._ring):
            self._ring = kept
            self._ids = [event.event_id for event in kept]

    def empty_ring_when(self, epoch: Callable[[], int]) -> None:
        """Empty the ring whenever `epoch()` has moved (erasures by other replicas may have
        been missed): watchers then read the log, which holds no erased event."""
        self._epoch = epoch
        self._epoch_seen = epoch()

    def _check_epoch(self) -> None:
        epoch = self._epoch
        if epoch is not None and (now := epoch()) != self._epoch_seen:
            self._epoch_seen = now
            self._ring = []
            self._ids = []
            self._ring_from = self._head

    async def watch(
        self, after_id: int | None, match: Match, *, replay_only: bool = False
    ) -> AsyncIterator[LoggedEvent]:
        """Matching events after `after_id` (None: from now on), oldest first, forever; with
        `replay_only`, only those logged before the call (the stream then ends).
        EventsExpired if events after `after_id` were removed by the retention."""
        head = await self.last_event_id()
        cursor = head if after_id is None else after_id
        if cursor > 0:
            await self._check_retained(cursor)
        else:  # the whole retained log (this process's ring may hold expired events still)
            cursor = max(0, await self._log.oldest_event_id() - 1)
        while not self._closed:
            if replay_only and cursor >= head:
                return
            advanced = self._advanced  # taken before looking: no wake-up can be missed
            batch, moved = await self._after(cursor)
            if moved > cursor:
                cursor = moved
                continue
            if not batch:
                await advanced.wait()
                continue
            for event in batch:
                if replay_only and event.event_id > head:
                    return
                cursor = event.event_id
                if match(event):
                    yield event

    async def _after(self, cursor: int) -> tuple[list[LoggedEvent], int]:
        """The next events after `cursor` (from the ring if it reaches back to it, else
        from the log), or none and the cursor moved past ids that hold no event."""
        self._check_epoch()
        if cursor >= self._ring_from:
            start = bisect.bisect_right(self._ids, cursor)
            batch = self._ring[start : start + PAGE]
            if not batch and cursor < self._head:
                return [], self._head  # none left between: an erasure removed them
            return batch, cursor
        batch = await self._log.read_events(cursor, PAGE)
        if batch and batch[0].event_id > cursor + 1:
            await self._check_retained(cursor)  # a gap: holes, or expired events?
        if not batch:
            return [], max(cursor, self._ring_from)  # only rolled-back ids between
        return batch, cursor

    async def _check_retained(self, cursor: int) -> None:
        """EventsExpired if the retention removed events after `cursor`. The retention never
        removes the newest event, so an oldest retained id more than one past the cursor
        means events after it are gone (or, rarely, only rolled-back ids lie between:
        resuming from the oldest retained id minus one then loses nothing either)."""
        oldest = await self._log.oldest_event_id()
        if oldest > cursor + 1:
            raise EventsExpired(cursor, oldest)

    async def close(self) -> None:
        self._closed = True
        self._advanced.set()
        if self._task is not None:
            await self._task.stop()
            self._task = None


#: How often the event log's retention runs.
EVENT_RETENTION_EVERY_S = 600.0


class EventRetention:
    """Removes events older than `retention_s` (0 keeps them forever) in small transactions,
    off the hot path: a supervised loop, a failed pass logged once and retried. Paced as
    history's retention is (`pacer`, app/pacing.py): a backlog of events (a teleporting
    fleet logs several an update) drains without holding the writer from ingestion."""

    def __init__(
        self,
        log_: EventLog,
        retention_s: float,
        clock_ns: Callable[[], int] = time.time_ns,
        *,
        pacer: Pacer | None = None,
    ) -> None:
        self._log = log_
        self.retention_ns = int(retention_s * 1e9)
        self._clock_ns = clock_ns
        self.pacer = pacer if pacer is not None else Pacer(DEFAULT_SHARE)
        self._failures = FailureLog(log, "event log retention", level=logging.WARNING)

    async def expire_once(self) -> int:
        if self.retention_ns <= 0:
            return 0
        cutoff = self._clock_ns() - self.retention_ns

        async def step(batch: int) -> int:
            return await self._log.expire_events(cutoff, batch)

        removed = 0
        while (done := await self.pacer.step(step)) > 0:
            removed += done
        return removed

    async def run(self, every_s: float = EVENT_RETENTION_EVERY_S) -> None:
        while True:
            try:
                removed = await self.expire_once()
            except Exception as exc:  # noqa: BLE001 - the store is away; the next pass retries
                self._failures.failed(exc)
            else:
                self._failures.succeeded()
                if removed:
                    log.info("event log retention removed %d events", removed)
            await asyncio.sleep(every_s)
