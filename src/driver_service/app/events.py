"""EventFeed: WatchEvents' replay and live follow over the event log, with no gap and no
duplicate at the hand-over and no buffer per watcher.

The log is the only source: a follower task (supervised, restarted on failure) reads it by
id after the newest id it has seen, when this process's store logs events (`notify`, called
after the commit) and at least every `poll_s` (events logged by other replicas on
PostgreSQL). What it reads goes into one shared ring of the newest events, and it wakes the
watchers. Event ids are assigned in commit order (see the stores), so reading by id never
skips an event that commits late.

A watcher keeps only a cursor, the id of the last event it has looked at. Each turn it takes
the events after its cursor from the ring if the ring still reaches back to it, or else
from the log (a page at a time), and moves its cursor past every event it looked at (sent or
filtered out). Replay and follow are the same loop, so the hand-over is seamless by
construction. A slow watcher holds nothing up: the follower never waits for it, and once
the ring has moved past its cursor it reads the log until it catches up.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Callable

from driver_service.domain.events import LoggedEvent
from driver_service.ports import EventLog
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor

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

    @property
    def head(self) -> int:
        """The newest event id this process has read from the log."""
        return self._head

    async def start(self) -> None:
        self._head = self._ring_from = await self._log.last_event_id()
        self._task = self._supervisor.start("event-feed", self._follow, Policy.RESTART)

    def notify(self, last_event_id: int) -> None:
        """The store committed events up to `last_event_id` (in this event loop's thread)."""
        if last_event_id > self._head:
            self._wake.set()

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            while True:
                events = await self._log.read_events(self._head, PAGE)
                if not events:
                    break
                self._append(events)
                if len(events) < PAGE:
                    break

    def _append(self, events: list[LoggedEvent]) -> None:
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

    async def watch(self, after_id: int | None, match: Match) -> AsyncIterator[LoggedEvent]:
        """Matching events after `after_id` (None: from now on), oldest first, forever."""
        cursor = await self.last_event_id() if after_id is None else after_id
        while not self._closed:
            advanced = self._advanced  # taken before looking: no wake-up can be missed
            if cursor >= self._ring_from:
                start = bisect.bisect_right(self._ids, cursor)
                batch = self._ring[start : start + PAGE]
            else:
                batch = await self._log.read_events(cursor, PAGE)
                if not batch:
                    cursor = max(cursor, self._ring_from)  # only rolled-back ids between
                    continue
            if not batch:
                await advanced.wait()
                continue
            for event in batch:
                cursor = event.event_id
                if match(event):
                    yield event

    async def close(self) -> None:
        self._closed = True
        self._advanced.set()
        if self._task is not None:
            await self._task.stop()
            self._task = None
