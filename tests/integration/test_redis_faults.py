"""Redis goes away and comes back: the bus says so, reconnects by itself and its watchers
resume without resubscribing; live state falls back to the durable store meanwhile and never
serves a location it missed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from driver_service.adapters.redis.bus import RedisBus
from driver_service.adapters.redis.connection import create_redis_client, redis_guard
from driver_service.adapters.redis.live import LiveStateRepository
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.fleet import RELIST, FleetChanges
from driver_service.app.tracking import DriverTracking
from driver_service.domain import Driver, Location, Status
from driver_service.ports import MissedLocations
from driver_service.resilience.guard import DependencyUnavailable
from tests.helpers.ports import free_port
from tests.helpers.redis import RedisServer
from tests.helpers.waiting import eventually

T0 = 1_717_200_000 * 10**9


def bus_on(redis: RedisServer, **options: Any) -> RedisBus:
    """A bus of its own on `redis` (prefix "f:"), closing its client with it."""
    return RedisBus(
        create_redis_client(redis.url, timeout_s=0.5), "f:", close_client=True, **options
    )


async def until_ping_passes(bus: RedisBus, timeout_s: float = 10.0) -> None:
    """Wait until the bus's health ping passes (Redis answers and every subscription of
    its pub/sub connection is confirmed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await bus.ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def loc(driver_id: str, i: int) -> Location:
    return Location(driver_id, i / 1000, -i / 1000, float(i % 30), float(i % 360), T0 + i)


async def test_bus_survives_a_redis_restart_and_watchers_resume(
    private_redis: RedisServer,
) -> None:
    watcher_bus = bus_on(private_redis, reconnect_max_s=0.2)
    publisher = bus_on(private_redis)
    try:
        sub = await watcher_bus.subscribe("d1")
        assert watcher_bus.healthy
        await watcher_bus.ping()
        await publisher.publish([loc("d1", 1)])
        assert await asyncio.wait_for(sub.next(), 2) == loc("d1", 1)
        waiting = asyncio.ensure_future(sub.next())

        private_redis.kill()
        await eventually(lambda: not watcher_bus.healthy, what="bus to report unhealthy")
        with pytest.raises(DependencyUnavailable):
            await watcher_bus.ping()
        with pytest.raises(DependencyUnavailable):
            await publisher.publish([loc("d1", 2)])  # lost with Redis: no one acknowledged it
        await publisher.publish([loc("d1", 2)])  # skipped at once while Redis is down
        assert publisher.skipped == 1
        await asyncio.sleep(0.3)  # a few reconnect attempts fail meanwhile
        assert not watcher_bus.healthy
        assert not waiting.done(), "the watcher's subscription ended during the outage"

        private_redis.start()  # same port, empty: every subscription must be made again
        # From Redis answering, not from asking for it: a loaded machine takes its time to
        # start a process, which says nothing about the bus.
        outage_ended = time.monotonic()
        await eventually(lambda: watcher_bus.healthy, what="bus to reconnect by itself")
        await until_ping_passes(watcher_bus)
        # Once resubscribed, the watcher is told it may have missed locations (loc 2 was).
        with pytest.raises(MissedLocations):
            await asyncio.wait_for(waiting, 5)
        waiting = asyncio.ensure_future(sub.next())
        # A publisher keeps publishing; the same subscription receives once resubscribed.
        # (A loaded machine can make the bus reconnect once more, e.g. a health ping that
        # timed out: each such reconnect tells the watcher again, and is no failure.)
        i = 3
        while not waiting.done() or isinstance(waiting.exception(), MissedLocations):
            assert time.monotonic() - outage_ended < 5, "watcher got nothing after recovery"
            if waiting.done():
                waiting = asyncio.ensure_future(sub.next())
            await publisher.publish([loc("d1", i)])
            i += 1
            await asyncio.wait([waiting], timeout=0.02)
        assert waiting.result().driver_id == "d1"
        assert waiting.result().recorded_at_ns >= T0 + 3
        await publisher.publish([loc("d1", 1000)])
        while (await asyncio.wait_for(sub.next(), 2)) != loc("d1", 1000):
            pass
        print(f"watcher resumed {time.monotonic() - outage_ended:.3f} s after Redis returned")
    finally:
        await watcher_bus.close()
        await publisher.close()


async def test_a_fleet_subscription_survives_a_redis_restart(private_redis: RedisServer) -> None:
    """The fleet pattern is subscribed again on reconnect, like every driver's channel: a
    live map open through a Redis restart moves again once Redis is back."""
    map_bus = bus_on(private_redis, reconnect_max_s=0.2)
    publisher = bus_on(private_redis)
    try:
        fleet = await map_bus.subscribe_fleet()
        await publisher.publish([loc("d1", 1)])
        assert await asyncio.wait_for(fleet.next_batch(), 2) == [loc("d1", 1)]
        waiting = asyncio.ensure_future(fleet.next_batch())
        private_redis.kill()
        await eventually(lambda: not map_bus.healthy, what="bus to report unhealthy")
        private_redis.start()
        await eventually(lambda: map_bus.healthy, what="bus to reconnect by itself")
        outage_ended = time.monotonic()
        with pytest.raises(MissedLocations):  # the view is told to list the fleet again
            await asyncio.wait_for(waiting, 2)
        waiting = asyncio.ensure_future(fleet.next_batch())
        i = 2
        while not waiting.done():
            assert time.monotonic() - outage_ended < 5, "the fleet got nothing after recovery"
            with contextlib.suppress(DependencyUnavailable):
                await publisher.publish([loc(f"d{i}", i)])
            i += 1
            await asyncio.wait([waiting], timeout=0.02)
        assert waiting.result()[0].recorded_at_ns >= T0 + 2
    finally:
        await map_bus.close()
        await publisher.close()


@pytest.fixture
async def replica(
    tmp_path: Path, private_redis: RedisServer
) -> AsyncIterator[tuple[LiveStateRepository, Redis]]:
    durable = await SqliteRepository.open(tmp_path / "drivers.db")
    client = create_redis_client(private_redis.url, timeout_s=0.5)
    repo = LiveStateRepository(
        durable,
        client,
        "f:",
        close_client=True,
        guard=redis_guard(client, 0.5, probe_every_s=0.05),
    )
    admin = create_redis_client(private_redis.url, timeout_s=0.5)
    try:
        yield repo, admin
    finally:
        await repo.close()
        await admin.aclose()


async def test_get_driver_falls_back_to_the_durable_store_while_redis_is_down(
    replica: tuple[LiveStateRepository, Redis], private_redis: RedisServer
) -> None:
    repo, admin = replica
    await repo.record_locations([loc("d1", 1)])
    assert await admin.exists(repo.key("d1"))

    private_redis.kill()
    with pytest.raises(DependencyUnavailable):
        await repo.ping()
    # Writes stay durable and acknowledged; reads answer from the durable store, fast.
    assert await repo.record_locations([loc("d1", 2)]) == [loc("d1", 2)]
    started = time.monotonic()
    assert await repo.get_driver("d1") == Driver("d1", Status.AVAILABLE, loc("d1", 2), T0 + 2)
    assert await repo.get_driver("d1") == Driver("d1", Status.AVAILABLE, loc("d1", 2), T0 + 2)
    assert time.monotonic() - started < 1.0

    private_redis.start()  # empty: the key is rebuilt from the durable store on first read
    await eventually(lambda: repo.guard.up, what="the guard's probe to find Redis back")
    await repo.ping()
    assert await repo.get_driver("d1") == Driver("d1", Status.AVAILABLE, loc("d1", 2), T0 + 2)
    assert await admin.hget(repo.key("d1"), "location_at_ns") == str(T0 + 2).encode()


async def test_a_live_write_that_failed_is_never_served_stale(
    replica: tuple[LiveStateRepository, Redis],
) -> None:
    """Redis keeps its data but refuses writes (a read-only replica, as during a failover):
    the key it still has is behind the durable store and must not be served."""
    repo, admin = replica
    await repo.record_locations([loc("d1", 1)])
    await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        assert await repo.record_locations([loc("d1", 2)]) == [loc("d1", 2)]
        assert await admin.hget(repo.key("d1"), "location_at_ns") == str(T0 + 1).encode()
        assert await repo.get_driver("d1") == Driver("d1", Status.AVAILABLE, loc("d1", 2), T0 + 2)
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
    # The probe answers, deletes the stale key, and only then is Redis used again.
    await eventually(lambda: repo.guard.up, what="the guard's probe to find Redis writable")

    assert await repo.get_driver("d1") == Driver("d1", Status.AVAILABLE, loc("d1", 2), T0 + 2)
    # The stale key was dropped and rebuilt: other replicas read the durable state too.
    assert await admin.hget(repo.key("d1"), "location_at_ns") == str(T0 + 2).encode()


@pytest.mark.parametrize("kind", ["location", "raw channel"])
async def test_a_subscribe_cancelled_while_redis_hangs_leaves_nothing_behind(
    private_redis: RedisServer, kind: str
) -> None:
    """A watcher whose client hangs up while its SUBSCRIBE waits on a hung Redis must not
    leave a local subscription (or channel handler) that nobody will ever close."""
    bus = RedisBus(create_redis_client(private_redis.url, timeout_s=2.0), "c:", close_client=True)
    try:
        await bus.subscribe("warm")  # connected, reader running
        private_redis.pause()
        if kind == "location":
            pending = asyncio.ensure_future(bus.subscribe("d1"))
        else:
            pending = asyncio.ensure_future(bus.subscribe_channel(b"c:raw", lambda _p: None))
        await asyncio.sleep(0.2)  # waiting for Redis
        assert not pending.done()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert bus.watcher_count() == 1  # only "warm"
        assert bus.channel_count() == 0
    finally:
        private_redis.resume()
        await bus.close()


async def test_a_watcher_is_sent_a_location_published_while_its_connection_was_away(
    replica: tuple[LiveStateRepository, Redis], private_redis: RedisServer
) -> None:
    """The watcher's pub/sub connection drops while Redis stays up (here CLIENT KILL; a
    Redis restart does the same), and a location is accepted and published before the bus
    is back: nobody received it. A driver that then stops moving was never sent its last
    location (make test saw it after a Redis restart). Once its channel is confirmed again
    the watcher reads the driver's current location and sends it."""
    repo, admin = replica
    await repo.record_locations([loc("d1", 1)])
    # Back 1-2 s after losing its connection: time to publish while it is away.
    watcher_bus = bus_on(private_redis, reconnect_min_s=2.0)
    publisher = bus_on(private_redis)
    dropped: list[bool] = []  # what a read cache listens to: it must forget what it held
    watcher_bus.disconnect_listeners.append(lambda: dropped.append(True))
    tracking = DriverTracking(repo, watcher_bus)
    watch = tracking.watch("d1")
    try:
        assert await asyncio.wait_for(anext(watch), 2) == loc("d1", 1)
        connects = watcher_bus.connects
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: not watcher_bus.healthy, what="the bus to see its loss")
        await repo.record_locations([loc("d1", 2)])
        await publisher.publish([loc("d1", 2)])
        assert watcher_bus.connects == connects, "published after the bus was back"
        assert await asyncio.wait_for(anext(watch), 5) == loc("d1", 2)
        assert watcher_bus.connects == connects + 1
        assert dropped
        # Nothing is sent twice, and live locations flow again.
        await publisher.publish([loc("d1", 2), loc("d1", 3)])
        assert await asyncio.wait_for(anext(watch), 2) == loc("d1", 3)
    finally:
        await watch.aclose()
        await watcher_bus.close()
        await publisher.close()


async def test_a_fleet_view_is_told_to_list_again_after_its_connection_was_away(
    private_redis: RedisServer,
) -> None:
    """As for one driver's watchers: a location published while the map's pub/sub
    connection was away reached no map, so once the fleet pattern is confirmed again the
    fleet subscription says so (the HTTP fleet stream then sends `ready` again and the map
    lists the fleet), and live locations flow on the same subscription."""
    map_bus = bus_on(private_redis, reconnect_min_s=2.0)
    publisher = bus_on(private_redis)
    admin = create_redis_client(private_redis.url, timeout_s=0.5)
    changes = FleetChanges(await map_bus.subscribe_fleet(), None)
    try:
        await publisher.publish([loc("d1", 1)])
        assert await asyncio.wait_for(anext(changes), 2) == [loc("d1", 1)]
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: not map_bus.healthy, what="the bus to see its loss")
        await publisher.publish([loc("d2", 2)])  # lost for this map
        assert not map_bus.healthy, "published after the bus was back"
        assert await asyncio.wait_for(anext(changes), 5) is RELIST
        await publisher.publish([loc("d2", 3)])
        assert await asyncio.wait_for(anext(changes), 2) == [loc("d2", 3)]
    finally:
        await changes.aclose()
        await map_bus.close()
        await publisher.close()
        await admin.aclose()


async def test_a_watcher_subscribed_while_redis_was_unreachable_catches_up(
    private_redis: RedisServer,
) -> None:
    """A subscription handed out while Redis cannot be reached is unconfirmed: what is
    published before the bus's first connection is lost for it, so it is told once its
    channel is confirmed (a watcher then reads its driver again)."""
    private_redis.kill()
    bus = bus_on(private_redis, reconnect_min_s=2.0, subscribe_timeout_s=0.2)
    publisher = bus_on(private_redis)
    try:
        sub = await bus.subscribe("d1")  # at once: Redis is away
        assert not bus.healthy
        private_redis.start()
        while True:  # the publisher's guard finds Redis back (it was down for it too)
            with contextlib.suppress(DependencyUnavailable):
                await publisher.ping()
                break
            await asyncio.sleep(0.02)
        await publisher.publish([loc("d1", 1)])  # before the bus's connection: lost for it
        assert bus.connects == 0, "published after the bus was connected"
        with pytest.raises(MissedLocations):
            await asyncio.wait_for(sub.next(), 5)
        await publisher.publish([loc("d1", 2)])
        assert await asyncio.wait_for(sub.next(), 2) == loc("d1", 2)
    finally:
        await bus.close()
        await publisher.close()


async def test_health_waits_for_the_pubsub_connection_not_only_for_redis(
    private_redis: RedisServer,
) -> None:
    """Redis answering commands is not enough: while the pub/sub connection is away (here
    in its reconnect backoff) watchers here receive nothing, so the bus's health ping, which
    the service's health follows, fails until the connection is back with every
    subscription confirmed (make test once saw SERVING 75 ms before the bus resubscribed)."""
    watcher_bus = bus_on(private_redis, reconnect_min_s=2.0)
    admin = create_redis_client(private_redis.url, timeout_s=0.5)
    sub = await watcher_bus.subscribe("d1")
    try:
        await watcher_bus.ping()
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: not watcher_bus.healthy, what="the bus to see its loss")
        assert await admin.ping()  # Redis itself answers
        with pytest.raises(Exception, match="pub/sub connection is down"):
            await watcher_bus.ping()
        await until_ping_passes(watcher_bus)
        assert watcher_bus.channel_confirmed(b"f:loc:d1")
    finally:
        sub.close()
        await watcher_bus.close()
        await admin.aclose()
