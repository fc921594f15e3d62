"""EventPublisher against an in-memory log and a broker stand-in that fails when told: the
cursor moves only past acknowledged events, a failed page is published again (the broker
dedups it), publishing resumes after the broker's newest event, events removed by retention
before publishing are reported, and a stop is prompt whatever the loop is doing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from driver_service.app.event_publisher import EventPublisher
from driver_service.domain.events import Event, EventType, LoggedEvent
from driver_service.resilience.supervision import TaskSupervisor
from tests.helpers.waiting import eventually


def logged(event_id: int) -> LoggedEvent:
    return LoggedEvent(event_id, event_id, Event(EventType.DRIVER_ONLINE, f"d{event_id}", 1))


class Log:
    def __init__(self, ids: Sequence[int], oldest: int | None = None) -> None:
        self.events = [logged(i) for i in ids]
        self.oldest = oldest if oldest is not None else (ids[0] if ids else 0)

    async def read_events(self, after_id: int, limit: int) -> list[LoggedEvent]:
        await asyncio.sleep(0)
        return [e for e in self.events if e.event_id > after_id][:limit]

    async def oldest_event_id(self) -> int:
        return self.oldest


class Broker:
    """Stores messages by id once (JetStream's dedup), fails while `failing` is set."""

    name = "fake"

    def __init__(self, stored: Sequence[int] = ()) -> None:
        self.stored: list[int] = list(stored)
        self.sent: list[int] = []
        self.failing = False

    async def last_published_id(self) -> int:
        await asyncio.sleep(0)
        return self.stored[-1] if self.stored else 0

    async def publish(self, events: Sequence[LoggedEvent]) -> None:
        for e in events:
            await asyncio.sleep(0)
            if self.failing:
                raise ConnectionError("broker away")
            self.sent.append(e.event_id)
            if e.event_id not in self.stored:
                self.stored.append(e.event_id)

    async def close(self) -> None:
        return None


async def test_resumes_after_the_brokers_newest_event_and_retries_until_acknowledged() -> None:
    log_ = Log(range(1, 11))
    broker = Broker(stored=[1, 2, 3])
    broker.failing = True
    publisher = EventPublisher(broker, log_, TaskSupervisor(), poll_s=0.01)  # type: ignore[arg-type]
    publisher.start()
    try:
        await eventually(
            lambda: publisher.problem is not None and publisher.cursor == 3, 5, "a failure"
        )
        assert broker.sent == []  # nothing acknowledged: the cursor stayed where the broker is
        broker.failing = False
        await eventually(lambda: publisher.cursor == 10, 5, "caught up")
        assert broker.stored == list(range(1, 11))
        assert broker.sent == list(range(4, 11))  # resumed after 3, in order
        assert publisher.problem is None
        log_.events.append(logged(11))
        publisher.notify([log_.events[-1]])
        await eventually(lambda: publisher.cursor == 11, 5, "a new event")
    finally:
        await publisher.close()


async def test_events_removed_before_publishing_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_ = Log([8, 9, 12], oldest=8)  # 4..7 expired; 10 and 11 are holes
    publisher = EventPublisher(Broker(stored=[1, 2, 3]), log_, TaskSupervisor(), poll_s=0.01)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        publisher.start()
        try:
            await eventually(lambda: publisher.cursor == 12, 5, "caught up")
        finally:
            await publisher.close()
    assert publisher.lost == 4
    assert "events after 3 up to 7 were removed" in caplog.text
    assert "up to 9" not in caplog.text  # a hole is not a loss


async def test_stop_is_prompt_while_waking_or_failing() -> None:
    broker = Broker()
    publisher = EventPublisher(broker, Log(range(1, 3)), TaskSupervisor(), poll_s=0.001)  # type: ignore[arg-type]
    publisher.start()
    await eventually(lambda: publisher.cursor == 2, 5, "caught up")
    for _ in range(50):  # stops landing wherever the loop is, waking up often
        await asyncio.sleep(0.002)
    done, _ = await asyncio.wait({asyncio.ensure_future(publisher.close())}, timeout=5)
    assert done, "the publisher ran on past its stop"
