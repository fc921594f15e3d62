"""EventFeed's hand-over from the store: events that follow the head go into the ring with no
read of the log; a gap, a late hand-over or one that races a read of the log leaves every
watcher with each event once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from driver_service.app.events import EventFeed
from driver_service.domain.events import Event, EventType, LoggedEvent
from driver_service.resilience.supervision import TaskSupervisor
from tests.helpers.waiting import eventually


def logged(event_id: int, driver_id: str = "d1") -> LoggedEvent:
    return LoggedEvent(event_id, event_id, Event(EventType.DRIVER_ONLINE, driver_id, event_id))


class Log:
    """An event log whose reads can be held in flight (`hold`) and are counted."""

    def __init__(self) -> None:
        self.events: list[LoggedEvent] = []
        self.reads = 0
        self.hold: asyncio.Event | None = None

    def commit(self, *ids: int, driver_id: str = "d1") -> list[LoggedEvent]:
        events = [logged(i, driver_id) for i in ids]
        self.events.extend(events)
        return events

    async def read_events(self, after_id: int, limit: int) -> list[LoggedEvent]:
        self.reads += 1
        if self.hold is not None:
            await self.hold.wait()
        return [e for e in self.events if e.event_id > after_id][:limit]

    async def last_event_id(self) -> int:
        return self.events[-1].event_id if self.events else 0

    async def oldest_event_id(self) -> int:
        return self.events[0].event_id if self.events else 0


@pytest.fixture
async def feed_and_log() -> AsyncIterator[tuple[EventFeed, Log]]:
    log = Log()
    supervisor = TaskSupervisor()
    feed = EventFeed(log, supervisor, poll_s=3600.0)  # type: ignore[arg-type]
    await feed.start()
    try:
        yield feed, log
    finally:
        await feed.close()
        await supervisor.close()


async def watched(feed: EventFeed, n: int, after_id: int = 0) -> list[int]:
    got: list[int] = []
    async with asyncio.timeout(5):
        async for event in feed.watch(after_id, lambda e: True):
            got.append(event.event_id)
            if len(got) == n:
                break
    return got


async def test_events_that_follow_the_head_are_not_read_back(
    feed_and_log: tuple[EventFeed, Log],
) -> None:
    feed, log = feed_and_log
    watcher = asyncio.create_task(watched(feed, 5))
    await asyncio.sleep(0.01)
    reads = log.reads
    feed.notify(log.commit(1, 2))
    feed.notify(log.commit(3))
    feed.notify(log.commit(4, 5))
    assert await watcher == [1, 2, 3, 4, 5]
    assert feed.head == 5
    assert log.reads == reads  # neither the feed nor the watcher read the log


async def test_a_gap_is_read_from_the_log(feed_and_log: tuple[EventFeed, Log]) -> None:
    """Events committed without a hand-over (another replica's, or a hand-over that never
    came) are read; ids a rolled-back transaction used are skipped."""
    feed, log = feed_and_log
    watcher = asyncio.create_task(watched(feed, 5))
    feed.notify(log.commit(1))
    log.commit(2, 3)  # not handed over
    feed.notify(log.commit(5, 6))  # 4: rolled back
    assert await watcher == [1, 2, 3, 5, 6]
    assert feed.head == 6


async def test_a_late_hand_over_is_not_appended_twice(feed_and_log: tuple[EventFeed, Log]) -> None:
    feed, log = feed_and_log
    first = log.commit(1, 2)
    second = log.commit(3)
    feed.notify(second)  # out of order: a gap, so the log is read (1, 2 and 3)
    await eventually(lambda: feed.head == 3, 5, "the log read")
    feed.notify(first)  # already read
    feed.notify(log.commit(4))
    assert await watched(feed, 4) == [1, 2, 3, 4]
    assert [e.event_id for e in feed._ring] == [1, 2, 3, 4]


async def test_a_hand_over_during_a_read_of_the_log_is_kept_once(
    feed_and_log: tuple[EventFeed, Log],
) -> None:
    """The follower's read returns events that were handed over while it was in flight:
    it keeps only what follows the head."""
    feed, log = feed_and_log
    log.commit(1, 2)  # not handed over
    log.hold = asyncio.Event()
    feed.notify(log.commit(3))  # a gap: the follower reads after 0 and is held
    await eventually(lambda: log.reads > 0, 5, "the read in flight")
    log.hold.set()
    await eventually(lambda: feed.head == 3, 5, "the read done")
    log.hold = asyncio.Event()
    log.commit(4)  # not handed over
    feed.notify(log.commit(5))  # a gap again: the read after 3 is held ...
    await eventually(lambda: log.reads > 1, 5, "the second read in flight")
    feed.notify([e for e in log.events if e.event_id == 4])  # ... 4 follows the head: kept
    feed.notify([e for e in log.events if e.event_id == 5])  # and 5 too
    assert feed.head == 5
    log.commit(6)
    log.hold.set()  # the read returns 4, 5 and 6: only 6 is new
    await eventually(lambda: feed.head == 6, 5, "the read done")
    assert [e.event_id for e in feed._ring] == [1, 2, 3, 4, 5, 6]
    assert await watched(feed, 6) == [1, 2, 3, 4, 5, 6]


async def test_an_erased_drivers_events_stay_out_after_later_hand_overs(
    feed_and_log: tuple[EventFeed, Log],
) -> None:
    feed, log = feed_and_log
    feed.notify(log.commit(1, 2, driver_id="gone"))
    feed.notify(log.commit(3))
    log.events = [e for e in log.events if e.event.driver_id != "gone"]  # the store's erasure
    assert await feed.forget("gone") == 0
    feed.notify(log.commit(4))  # follows the head: appended, with no read of the log
    assert [e.event_id for e in feed._ring] == [3, 4]
    assert await watched(feed, 2) == [3, 4]


async def test_the_ring_is_emptied_when_erasures_may_have_been_missed(
    feed_and_log: tuple[EventFeed, Log],
) -> None:
    """Another replica's erasure reaches this feed by pub/sub, which loses what is published
    while the connection is away: when the epoch moves (the connection was made again) the
    ring is emptied and watchers read the log, which holds no erased event."""
    feed, log = feed_and_log
    epoch = [0]
    feed.empty_ring_when(lambda: epoch[0])
    feed.notify(log.commit(1, driver_id="victim"))
    feed.notify(log.commit(2, driver_id="kept"))
    assert await watched(feed, 2) == [1, 2]
    log.events = [e for e in log.events if e.event.driver_id != "victim"]  # erased elsewhere
    assert [e.event_id for e in feed._ring] == [1, 2]  # the broadcast was missed
    epoch[0] += 1  # the connection was made again
    reads = log.reads
    assert await watched(feed, 1) == [2]
    assert feed._ring == []
    assert log.reads > reads  # from the log
    feed.notify(log.commit(3, driver_id="kept"))
    assert await watched(feed, 2) == [2, 3]
