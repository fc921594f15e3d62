"""MemoryBus: live fan-out inside one process. A watcher sees its own driver only, a slow
watcher loses old positions instead of slowing ingestion, and shutdown ends every stream."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from driver_service.app.fanout import MemoryBus
from driver_service.domain import Location
from driver_service.ports import SubscriptionClosed

T0 = 1_717_200_000 * 10**9


def loc(driver_id: str, i: int) -> Location:
    return Location(driver_id, i / 1000, -i / 1000, float(i % 30), float(i % 360), T0 + i)


def run_without_suspending(coro: Coroutine[Any, Any, None]) -> None:
    """Drive a coroutine one step; it must finish in that step, i.e. never wait for anything."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    pytest.fail("publish suspended: a watcher can make ingestion wait")


async def test_subscriber_receives_only_its_drivers_locations_in_order() -> None:
    bus = MemoryBus()
    sub_a = await bus.subscribe("a")
    sub_b = await bus.subscribe("b")

    await bus.publish([loc("a", 1), loc("b", 1), loc("c", 1), loc("a", 2)])

    assert await sub_a.next() == loc("a", 1)
    assert await sub_a.next() == loc("a", 2)
    assert await sub_b.next() == loc("b", 1)
    # Nothing else is queued for a: the next read waits.
    pending = asyncio.ensure_future(sub_a.next())
    await asyncio.sleep(0.01)
    assert not pending.done()
    await bus.publish([loc("a", 3)])
    assert await asyncio.wait_for(pending, 1) == loc("a", 3)
    await bus.close()


async def test_every_watcher_of_a_driver_gets_each_location() -> None:
    bus = MemoryBus()
    subs = [await bus.subscribe("a") for _ in range(3)]

    await bus.publish([loc("a", 1)])

    for sub in subs:
        assert await sub.next() == loc("a", 1)
    await bus.close()


async def test_a_waiting_subscriber_is_woken_by_publish() -> None:
    bus = MemoryBus()
    sub = await bus.subscribe("a")
    reader = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)

    await bus.publish([loc("a", 7)])

    assert await asyncio.wait_for(reader, 1) == loc("a", 7)
    await bus.close()


async def test_slow_subscriber_queue_is_bounded_and_keeps_the_newest() -> None:
    bus = MemoryBus(queue_size=4)
    sub = await bus.subscribe("a")

    for i in range(1000):
        await bus.publish([loc("a", i)])

    received = [await sub.next() for _ in range(4)]
    assert received == [loc("a", i) for i in (996, 997, 998, 999)]
    pending = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0.01)
    assert not pending.done(), "more than queue_size locations were buffered"
    pending.cancel()
    await bus.close()


async def test_publish_never_blocks_even_with_an_unread_full_queue() -> None:
    bus = MemoryBus(queue_size=2)
    unread = [await bus.subscribe("a") for _ in range(10)]

    for i in range(10_000):
        run_without_suspending(bus.publish([loc("a", i), loc("b", i)]))

    for sub in unread:
        assert await sub.next() == loc("a", 9_998)
    await bus.close()


async def test_bus_close_ends_waiting_and_later_reads_with_subscription_closed() -> None:
    bus = MemoryBus()
    sub = await bus.subscribe("a")
    waiting = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)

    await bus.close()

    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(SubscriptionClosed):
        await sub.next()
    assert bus.watcher_count() == 0


async def test_closed_subscription_drops_queued_locations_and_stops_receiving() -> None:
    bus = MemoryBus()
    sub = await bus.subscribe("a")
    await bus.publish([loc("a", 1)])

    sub.close()
    await bus.publish([loc("a", 2)])

    with pytest.raises(SubscriptionClosed):
        await sub.next()


async def test_unsubscribe_cleans_up_watchers() -> None:
    bus = MemoryBus()
    a1 = await bus.subscribe("a")
    a2 = await bus.subscribe("a")
    b1 = await bus.subscribe("b")
    assert bus.watcher_count() == 3

    a1.close()
    a1.close()  # idempotent
    assert bus.watcher_count() == 2
    a2.close()
    b1.close()
    assert bus.watcher_count() == 0
    # No empty per-driver sets left behind by drivers nobody watches any more.
    assert bus._watchers == {}


async def test_watchers_are_woken_in_the_order_they_subscribed() -> None:
    bus = MemoryBus()
    subs = [await bus.subscribe("a") for _ in range(50)]
    woken: list[int] = []

    async def read(n: int) -> None:
        await subs[n].next()
        woken.append(n)

    # Readers start in reverse, so their wait order is not what is being checked.
    readers = [asyncio.ensure_future(read(n)) for n in reversed(range(50))]
    await asyncio.sleep(0)
    subs[10].close()
    await bus.publish([loc("a", 1)])
    await asyncio.gather(*readers, return_exceptions=True)

    assert woken == [n for n in range(50) if n != 10]
    await bus.close()


async def test_a_subscription_waits_again_after_every_wake() -> None:
    """The loop is looked up once per subscription; every later wait still suspends."""
    bus = MemoryBus()
    sub = await bus.subscribe("a")
    for i in range(3):
        reader = asyncio.ensure_future(sub.next())
        await asyncio.sleep(0.01)
        assert not reader.done()
        await bus.publish([loc("a", i)])
        assert await asyncio.wait_for(reader, 1) == loc("a", i)
    await bus.close()
