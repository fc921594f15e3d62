"""One LocationBus contract, run against the in-memory bus and the Redis bus on a private
redis-server; plus what only Redis gives: fan-out between processes, and live driver state
shared by replicas that never moves a location back in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from driver_service.adapters.redis.bus import RedisBus
from driver_service.adapters.redis.connection import create_redis_client
from driver_service.adapters.redis.live import LiveStateRepository
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.fanout import MemoryBus
from driver_service.domain import Driver, Location, Status
from driver_service.ports import (
    FleetSubscription,
    LocationBus,
    Subscription,
    SubscriptionClosed,
)
from tests.helpers.redis import RedisServer
from tests.helpers.waiting import eventually

T0 = 1_717_200_000 * 10**9

BusFactory = Callable[..., Awaitable[LocationBus]]


def loc(driver_id: str, i: int) -> Location:
    return Location(driver_id, i / 1000, -i / 1000, float(i % 30), float(i % 360), T0 + i)


async def next_within(sub: Subscription, timeout_s: float = 2.0) -> Location:
    return await asyncio.wait_for(sub.next(), timeout_s)


@pytest.fixture(params=["memory", "redis"])
async def make_bus(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[BusFactory]:
    """Builds buses of the parametrized kind; every Redis bus has its own connections, as a
    separate process would."""
    buses: list[LocationBus] = []

    async def build(queue_size: int = 8) -> LocationBus:
        bus: LocationBus
        if request.param == "memory":
            bus = MemoryBus(queue_size)
        else:
            redis_server.start()
            client = create_redis_client(redis_server.url)
            rbus = RedisBus(client, redis_prefix, queue_size=queue_size, close_client=True)
            rbus.start()
            await eventually(lambda: rbus.healthy, what="redis bus connected")
            bus = rbus
        buses.append(bus)
        return bus

    try:
        yield build
    finally:
        for bus in buses:
            await bus.close()


async def test_subscriber_gets_only_its_drivers_locations_in_order(make_bus: BusFactory) -> None:
    bus = await make_bus()
    sub_a = await bus.subscribe("a")
    sub_b = await bus.subscribe("b")

    await bus.publish([loc("a", 1), loc("b", 1), loc("c", 1), loc("a", 2)])
    await bus.publish([loc("a", 3)])
    await bus.publish([loc("c", 2), loc("b", 2), loc("a", 4)])

    assert [await next_within(sub_a) for _ in range(4)] == [loc("a", i) for i in (1, 2, 3, 4)]
    # b's next two are b's own: c's and a's locations never reached it.
    assert [await next_within(sub_b) for _ in range(2)] == [loc("b", 1), loc("b", 2)]


async def test_every_watcher_of_a_driver_gets_each_location(make_bus: BusFactory) -> None:
    bus = await make_bus()
    subs = [await bus.subscribe("a") for _ in range(3)]

    await bus.publish([loc("a", 1)])

    for sub in subs:
        assert await next_within(sub) == loc("a", 1)


async def test_slow_subscriber_coalesces_to_the_newest_locations(make_bus: BusFactory) -> None:
    bus = await make_bus(queue_size=4)
    slow = await bus.subscribe("a")
    fast = await bus.subscribe("a")

    for batch in range(10):
        await bus.publish([loc("a", batch * 100 + i) for i in range(100)])
    # The fast reader seeing the last one means every location was dispatched to both.
    while (await next_within(fast)) != loc("a", 999):
        pass

    assert [await next_within(slow) for _ in range(4)] == [loc("a", i) for i in range(996, 1000)]


async def test_closed_subscription_gets_nothing_and_others_still_do(make_bus: BusFactory) -> None:
    bus = await make_bus()
    gone = await bus.subscribe("a")
    stays = await bus.subscribe("a")
    gone.close()

    await bus.publish([loc("a", 1)])

    assert await next_within(stays) == loc("a", 1)
    with pytest.raises(SubscriptionClosed):
        await next_within(gone)


async def test_close_ends_waiting_subscriptions(make_bus: BusFactory) -> None:
    bus = await make_bus()
    subs = [await bus.subscribe("a"), await bus.subscribe("b")]
    waiting = [asyncio.ensure_future(sub.next()) for sub in subs]
    await asyncio.sleep(0.01)

    await bus.close()

    for reader in waiting:
        with pytest.raises(SubscriptionClosed):
            await asyncio.wait_for(reader, 2)


async def batch_within(fleet: FleetSubscription, timeout_s: float = 2.0) -> list[Location]:
    return await asyncio.wait_for(fleet.next_batch(), timeout_s)


async def test_a_fleet_subscription_gets_every_drivers_newest_location(
    make_bus: BusFactory,
) -> None:
    """The live fleet map's feed: every driver, watched or not, each driver's newest only
    while the reader is away (a backlog bounded by the fleet, not by its rate)."""
    bus = await make_bus()
    fleet = await bus.subscribe_fleet()
    watcher = await bus.subscribe("a")

    await bus.publish([loc("a", 1), loc("b", 1), loc("c", 1)])
    got = await batch_within(fleet)
    while len(got) < 3:  # Redis delivers one message at a time
        got += await batch_within(fleet)
    assert sorted(got, key=lambda x: x.driver_id) == [loc("a", 1), loc("b", 1), loc("c", 1)]
    assert await next_within(watcher) == loc("a", 1)  # a watched driver comes once to each

    await bus.publish([loc("b", i) for i in range(2, 500)] + [loc("z", 1)])
    newest: dict[str, Location] = {}
    while newest.get("b") != loc("b", 499) or "z" not in newest:
        for location in await batch_within(fleet):
            assert location.driver_id not in newest or location.recorded_at_ns > (
                newest[location.driver_id].recorded_at_ns
            )
            newest[location.driver_id] = location
    assert newest == {"b": loc("b", 499), "z": loc("z", 1)}

    fleet.close()
    await bus.publish([loc("a", 600)])
    assert await next_within(watcher) == loc("a", 600)
    with pytest.raises(SubscriptionClosed):
        await batch_within(fleet)


async def test_close_ends_a_waiting_fleet_subscription(make_bus: BusFactory) -> None:
    bus = await make_bus()
    fleet = await bus.subscribe_fleet()
    waiting = asyncio.ensure_future(fleet.next_batch())
    await asyncio.sleep(0.01)
    await bus.close()
    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(waiting, 2)


# --- Redis only: across processes ------------------------------------------------------------
async def redis_bus(server: RedisServer, prefix: str) -> RedisBus:
    bus = RedisBus(create_redis_client(server.url), prefix, close_client=True)
    bus.start()
    await eventually(lambda: bus.healthy, what="redis bus connected")
    return bus


async def test_publish_on_one_bus_reaches_a_watcher_on_another_in_order(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    publisher = await redis_bus(redis_server, redis_prefix)
    watcher_side = await redis_bus(redis_server, redis_prefix)
    try:
        sub = await watcher_side.subscribe("d1")
        await publisher.publish([loc("d1", 0)])  # warm-up: connections, first dispatch
        assert await next_within(sub) == loc("d1", 0)

        for i in range(1, 101):
            await publisher.publish([loc("d1", i)])
            assert await next_within(sub) == loc("d1", i)
    finally:
        await publisher.close()
        await watcher_side.close()
    # Order and arrival only: a latency bound here would fail on a loaded machine.


async def numsub(client: Redis, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(channel)
    return int(count)


async def test_redis_channels_are_reference_counted_per_driver(
    redis_server: RedisServer, redis_prefix: str, redis_client: Redis
) -> None:
    bus = await redis_bus(redis_server, redis_prefix)
    channel = f"{redis_prefix}loc:a"
    try:
        first, second = await bus.subscribe("a"), await bus.subscribe("a")
        # subscribe() returned only after Redis confirmed the channel: one for both watchers.
        assert await numsub(redis_client, channel) == 1

        first.close()
        await asyncio.sleep(0.05)
        assert await numsub(redis_client, channel) == 1
        second.close()
        deadline = time.monotonic() + 2
        while await numsub(redis_client, channel) != 0:
            assert time.monotonic() < deadline, "channel still subscribed after last watcher"
            await asyncio.sleep(0.01)

        # Subscribing again right away works (the UNSUBSCRIBE did not overtake it).
        again = await bus.subscribe("a")
        await bus.publish([loc("a", 5)])
        assert await next_within(again) == loc("a", 5)
    finally:
        await bus.close()


async def test_the_fleet_pattern_is_held_while_a_fleet_subscription_is_open_and_crosses_buses(
    redis_server: RedisServer, redis_prefix: str, redis_client: Redis
) -> None:
    """One PSUBSCRIBE per process while any fleet subscription is open; locations published
    by another process (another worker) reach it."""
    here = await redis_bus(redis_server, redis_prefix)
    there = await redis_bus(redis_server, redis_prefix)
    try:
        first, second = await here.subscribe_fleet(), await here.subscribe_fleet()
        assert await redis_client.pubsub_numpat() == 1
        await there.publish([loc("far", 1)])
        assert await batch_within(first) == [loc("far", 1)]
        assert await batch_within(second) == [loc("far", 1)]
        first.close()
        second.close()
        deadline = time.monotonic() + 2
        while await redis_client.pubsub_numpat() != 0:
            assert time.monotonic() < deadline, "pattern still subscribed after the last one"
            await asyncio.sleep(0.01)
        again = await here.subscribe_fleet()
        await there.publish([loc("far", 2)])
        assert await batch_within(again) == [loc("far", 2)]
    finally:
        await here.close()
        await there.close()


# --- Live state shared by replicas -----------------------------------------------------------
@pytest.fixture
async def replicas(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[tuple[LiveStateRepository, LiveStateRepository]]:
    """Two replicas, each with its own SQLite and its own Redis connections."""
    redis_server.start()
    pair = []
    for name in ("a", "b"):
        durable = await SqliteRepository.open(tmp_path / name / "drivers.db")
        client = create_redis_client(redis_server.url)
        pair.append(LiveStateRepository(durable, client, redis_prefix, close_client=True))
    try:
        yield pair[0], pair[1]
    finally:
        for repo in pair:
            await repo.close()


async def test_replicas_see_each_others_current_state(
    replicas: tuple[LiveStateRepository, LiveStateRepository],
) -> None:
    a, b = replicas
    fix = Location("d1", 37.774929123456789, -122.41941612345678, 13.37, 271.5, T0 + 1)
    assert await a.record_locations([fix]) == [fix]

    # b's own database never saw d1: the answer comes from Redis, exact to the bit.
    assert await b.durable.get_driver("d1") is None
    assert await b.get_driver("d1") == Driver("d1", Status.AVAILABLE, fix, T0 + 1)

    await b.set_status("d1", Status.BUSY, T0 + 5)
    assert await a.get_driver("d1") == Driver("d1", Status.BUSY, fix, T0 + 5)


async def test_conflicts_pass_through_live_state_and_never_reach_redis(
    replicas: tuple[LiveStateRepository, LiveStateRepository],
) -> None:
    a, b = replicas
    fix = loc("d1", 10)
    other = Location("d1", 1.5, fix.longitude, fix.speed_mps, fix.heading_degrees, T0 + 10)
    recorded = await a.record_locations([fix, other])
    assert (recorded, recorded.conflicts) == ([fix], (other,))
    again = await a.record_locations([other])
    assert (again, again.conflicts) == ([], (other,))
    driver = await b.get_driver("d1")  # b's own database never saw d1: this is Redis
    assert driver is not None
    assert driver.location == fix


async def test_out_of_order_across_replicas_never_moves_back(
    replicas: tuple[LiveStateRepository, LiveStateRepository],
) -> None:
    a, b = replicas
    newest = loc("d1", 1_000_001)
    await a.record_locations([newest])
    # b's database has no location for d1, so for b these all advance its own state.
    older = [loc("d1", 1_000_000), loc("d1", 5)]  # one 1 ns older: beyond a double's precision
    assert await b.record_locations(older[:1]) == older[:1]
    assert await b.record_locations(older[1:]) == []  # older than b's own, history only

    for replica in (a, b):
        driver = await replica.get_driver("d1")
        assert driver is not None
        assert driver.location == newest
        assert driver.last_seen_at_ns == newest.recorded_at_ns

    # And one nanosecond newer does move it forward, from either replica.
    newer = loc("d1", 1_000_002)
    await b.record_locations([newer])
    assert await a.get_driver("d1") == Driver("d1", Status.AVAILABLE, newer, T0 + 1_000_002)


async def test_missing_live_key_is_back_filled_from_the_durable_store(
    replicas: tuple[LiveStateRepository, LiveStateRepository], redis_client: Redis
) -> None:
    a, _ = replicas
    await a.record_locations([loc("d1", 7)])
    await a.set_status("d1", Status.OFFLINE, T0 + 9)
    await redis_client.delete(a.key("d1"))  # as after a Redis restart without persistence

    expected = Driver("d1", Status.OFFLINE, loc("d1", 7), T0 + 9)
    assert await a.get_driver("d1") == expected
    assert await redis_client.hget(a.key("d1"), "status") == b"OFFLINE"

    # A location for a driver whose key is gone rebuilds it with the durable status.
    await redis_client.delete(a.key("d1"))
    await a.record_locations([loc("d1", 8)])
    assert await redis_client.hget(a.key("d1"), "status") == b"OFFLINE"
    assert await redis_client.hget(a.key("d1"), "location_at_ns") == str(T0 + 8).encode()


async def test_durable_store_down_nothing_is_written_live_and_reads_come_from_redis(
    replicas: tuple[LiveStateRepository, LiveStateRepository],
) -> None:
    a, b = replicas
    await a.record_locations([loc("d1", 1)])
    await b.durable.close()  # b's database is gone

    with pytest.raises(RuntimeError):
        await b.record_locations([loc("d1", 2)])
    # Not durable, so not live either; and b still answers GetDriver from Redis.
    assert await b.get_driver("d1") == Driver("d1", Status.AVAILABLE, loc("d1", 1), T0 + 1)
