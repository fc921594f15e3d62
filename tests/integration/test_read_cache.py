"""The per-process read cache on PostgreSQL + Redis (adapters/redis/read_cache.py): two
replicas, each its own RedisBus, Redis client and PostgreSQL pool, on ONE private
redis-server and one database. A location, a status change or an erasure made on one replica
reaches the other's cache within the staleness bound; a Redis that is killed or hung makes
the cache step aside (reads go to Redis or the store) within the bound, and it fills again
once Redis is back; an older message never moves an entry back; the cache stays bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import generate_latest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc
from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.adapters.redis.bus import RedisBus
from driver_service.adapters.redis.connection import create_redis_client, redis_guard
from driver_service.adapters.redis.live import LiveStateRepository
from driver_service.adapters.redis.read_cache import DriverReadCache
from driver_service.app.history import LocationHistory
from driver_service.domain import Driver, Location, Status
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.server.composition import build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server
from tests.helpers.redis import RedisServer
from tests.helpers.stores import replica_settings
from tests.helpers.waiting import eventually

T0 = 1_717_200_000 * 10**9
PREFIX = "rc:"
#: The bound the replicas run with, and what a poll on a loaded machine may add to it.
STALE_S = 0.4
SLACK_S = 0.3


def loc(driver_id: str, i: int) -> Location:
    return Location(driver_id, i / 1000, -i / 1000, float(i % 30), float(i % 360), T0 + i)


@dataclass
class Replica:
    live: LiveStateRepository
    bus: RedisBus
    cache: DriverReadCache

    async def close(self) -> None:
        await self.bus.close()
        await self.live.close()


async def open_replica(redis_url: str, postgres_url: str, max_entries: int = 100) -> Replica:
    durable = await PostgresRepository.open(postgres_url, timeout_s=2.0)
    client = create_redis_client(redis_url, timeout_s=0.3)
    guard = redis_guard(client, 0.3, probe_every_s=0.05)
    bus = RedisBus(
        client,
        PREFIX,
        guard=guard,
        idle_ping_s=1.0,  # as served: a hung connection is declared dead after 1-2 s
        ping_every_s=STALE_S / 4,
        reconnect_max_s=0.2,
    )
    bus.start()
    live = LiveStateRepository(durable, client, PREFIX, close_client=True, guard=guard)
    cache = DriverReadCache(bus, guard, live.key(""), max_entries=max_entries, max_stale_s=STALE_S)
    live.use_cache(cache)
    return Replica(live, bus, cache)


@pytest.fixture
async def replicas(
    private_redis: RedisServer, postgres_url: str
) -> AsyncIterator[tuple[Replica, Replica]]:
    a = await open_replica(private_redis.url, postgres_url)
    b = await open_replica(private_redis.url, postgres_url)
    await eventually(lambda: a.bus.healthy and b.bus.healthy, what="both buses to connect")
    try:
        yield a, b
    finally:
        try:
            async with asyncio.timeout(20):
                await a.close()
                await b.close()
        except TimeoutError:
            import sys

            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            raise


async def cached(replica: Replica, driver_id: str) -> Driver:
    """Read the driver through the replica until its cache holds it."""
    for _ in range(200):
        driver = await replica.live.get_driver(driver_id)
        assert driver is not None
        if replica.live.current_driver(driver_id) is not None:
            return driver
        await asyncio.sleep(0.01)
    pytest.fail(f"{driver_id} never got into the read cache")


async def seen_within(
    replica: Replica, driver_id: str, check: Callable[[Driver | None], bool], what: str
) -> float:
    """Seconds until the replica's GetDriver path (cache first) answers what `check` wants;
    fails past the staleness bound and its slack."""
    started = time.monotonic()
    while True:
        driver = replica.live.current_driver(driver_id)
        if driver is None:
            driver = await replica.live.get_driver(driver_id)
        if check(driver):
            return time.monotonic() - started
        if time.monotonic() - started > STALE_S + SLACK_S:
            pytest.fail(f"{what}: still {driver} after {STALE_S + SLACK_S} s")
        await asyncio.sleep(0.005)


async def test_location_status_and_erasure_on_one_replica_reach_the_others_cache(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.live.record_locations([loc("d1", 1)])
    assert (await cached(b, "d1")).location == loc("d1", 1)

    # At a time before the last fix (the phone's clock runs ahead): only the status changes.
    await a.live.set_status("d1", Status.BUSY, T0)
    await seen_within(b, "d1", lambda d: d is not None and d.status is Status.BUSY, "status")
    # Served from memory, not read again: the message brought the change.
    assert b.live.current_driver("d1") is not None

    await a.live.record_locations([loc("d1", 5)])
    await seen_within(b, "d1", lambda d: d is not None and d.location == loc("d1", 5), "loc")
    driver = b.live.current_driver("d1")
    assert driver is not None
    assert driver.status is Status.BUSY
    assert driver.last_seen_at_ns == T0 + 5

    # Erasure: the live hash goes first (its "-" drops every cached copy), then the store.
    await a.live.forget("d1")
    await a.live.durable.forget_driver("d1")
    await seen_within(b, "d1", lambda d: d is None, "erasure")
    assert b.live.current_driver("d1") is None


async def test_a_replica_reads_its_own_writes_at_once(replicas: tuple[Replica, Replica]) -> None:
    """The writing replica's cache takes its own writes before they are acknowledged, not a
    pub/sub trip later: read-your-writes holds on one replica, as on SQLite."""
    a, _ = replicas
    await a.live.record_locations([loc("d5", 1)])
    await cached(a, "d5")
    await a.live.record_locations([loc("d5", 2)])
    driver = a.live.current_driver("d5")
    assert driver is not None
    assert driver.location == loc("d5", 2)
    driver = await a.live.set_status("d5", Status.OFFLINE, T0)
    assert a.live.current_driver("d5") == driver
    await a.live.forget("d5")
    assert a.live.current_driver("d5") is None


async def test_a_refill_that_raced_an_erasure_does_not_bring_the_driver_back(
    replicas: tuple[Replica, Replica], private_redis: RedisServer
) -> None:
    """ForgetDriver on A deletes live state, erases the store, then deletes live state again.
    A first read on B that found no live key between the two and read the store before it
    was erased back-fills the key after the erasure: refused, or B and every replica would
    serve the erased driver again (from Redis and from their caches) until the key expired."""
    a, b = replicas
    await a.live.record_locations([loc("d7", 1)])
    raced: list[tuple[bytes | None, Driver | None]] = []

    async def b_reads_between(driver_id: str) -> int:
        if not raced:  # B's read as `_read` does it: count deletions, then read the store
            drops = await b.live._redis.get(b.live._drops_key)
            raced.append((drops, await b.live.durable.get_driver(driver_id)))
        return 0

    history = LocationHistory(a.live.durable, forget_live=[a.live.forget, b_reads_between])
    await history.forget("d7", by="test")
    drops, stale = raced[0]
    assert stale is not None  # the store had not erased it yet when B read it
    await b.live._fill_missing(stale, drops)  # B's back-fill lands after the erasure
    assert await b.live.get_driver("d7") is None
    client = create_redis_client(private_redis.url)
    try:
        assert not await client.exists(b.live.key("d7"))
    finally:
        await client.aclose()


async def test_an_older_message_never_moves_an_entry_back(
    replicas: tuple[Replica, Replica], private_redis: RedisServer
) -> None:
    a, b = replicas
    await a.live.record_locations([loc("d2", 10)])
    await cached(b, "d2")
    client = create_redis_client(private_redis.url)
    try:
        channel = b.live.key("d2")
        entry = b.live.current_driver("d2")
        handled = asyncio.Event()
        sentinel = await b.bus.subscribe_channel(b"rc:sentinel", lambda _: handled.set())
        # A state older than the entry's (an earlier version), then a message on another
        # channel of the same connection: once that one is handled, so was the first.
        await client.publish(channel, f"1 OFFLINE {T0 + 99} 1.0 2.0 3.0 4.0 {T0 + 99}")
        await client.publish("rc:sentinel", "x")
        await asyncio.wait_for(handled.wait(), 2)
        sentinel.close()
        assert b.live.current_driver("d2") is entry, "an older message moved the entry back"
        # A real change still moves it forward.
        await a.live.set_status("d2", Status.BUSY, T0 + 11)
        await seen_within(b, "d2", lambda d: d is not None and d.status is Status.BUSY, "st")
        driver = b.live.current_driver("d2")
        assert driver is not None
        assert driver.location == loc("d2", 10)
        assert driver.last_seen_at_ns == T0 + 11
    finally:
        await client.aclose()


async def test_a_change_made_during_the_first_read_is_not_missed(
    replicas: tuple[Replica, Replica],
) -> None:
    """The first read of a driver races a write on another replica: the write lands after
    the read but before the entry is made. The entry still gets the write (its message
    arrived on the channel subscribed before the read)."""
    a, b = replicas
    await a.live.record_locations([loc("d3", 1)])

    async def read_then_someone_writes(driver_id: str) -> tuple[Driver | None, int]:
        answer = await b.live._read(driver_id)
        await a.live.set_status(driver_id, Status.BUSY, T0 + 2)
        await asyncio.sleep(0.05)  # the reader task handles the change's message
        return answer

    driver = await b.cache.read_through("d3", read_then_someone_writes)
    assert driver is not None
    cached_driver = b.live.current_driver("d3")
    assert cached_driver is not None, "the first read was not cached"
    assert cached_driver.status is Status.BUSY, "the change during the first read was lost"


async def test_the_cache_stays_bounded_and_unsubscribes_what_it_evicts(
    private_redis: RedisServer, postgres_url: str
) -> None:
    small = await open_replica(private_redis.url, postgres_url, max_entries=3)
    try:
        await eventually(lambda: small.bus.healthy, what="bus to connect")
        await small.live.record_locations([loc(f"e{i}", i) for i in range(10)])
        for i in range(10):
            await cached(small, f"e{i}")
            assert len(small.cache) <= 3
        assert small.cache.fills == 10
        await eventually(lambda: small.bus.channel_count() <= 3, what="evicted unsubscribed")
        # The least recently read were evicted; the newest are served from memory.
        assert small.live.current_driver("e0") is None
        assert small.live.current_driver("e9") is not None
    finally:
        await small.close()


async def serve_stale_for(replica: Replica, driver_id: str, stale: Driver) -> float:
    """Poll the cache path until it stops answering `stale`; the seconds it kept doing so."""
    started = time.monotonic()
    while replica.live.current_driver(driver_id) == stale:
        assert time.monotonic() - started < 5
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def recovered(replica: Replica, driver_id: str, want: Callable[[Driver], bool]) -> None:
    deadline = time.monotonic() + 10
    while True:
        driver = await replica.live.get_driver(driver_id)
        current = replica.live.current_driver(driver_id)
        if driver is not None and want(driver) and current is not None and want(current):
            return
        assert time.monotonic() < deadline, f"cache did not recover: {driver} / {current}"
        await asyncio.sleep(0.02)


async def outage_then_recovery(
    a: Replica, b: Replica, stop: Callable[[], None], restart: Callable[[], Awaitable[None]]
) -> None:
    await a.live.record_locations([loc("d4", 1)])
    before = await cached(b, "d4")
    stopped = time.monotonic()
    stop()
    # A change on A while Redis is away: it lands in PostgreSQL only (A's Redis write waits
    # for its bound meanwhile, so B is watched at the same time).
    change = asyncio.ensure_future(a.live.set_status("d4", Status.BUSY, T0 + 2))
    await serve_stale_for(b, "d4", before)
    # Counted from the stop: the bound holds from the last PING Redis answered.
    served_stale = time.monotonic() - stopped
    assert served_stale <= STALE_S + SLACK_S, f"served a stale entry for {served_stale:.2f} s"
    await change
    # Falls back honestly: the store's answer (Redis skipped), never the old entry.
    driver = await b.live.get_driver("d4")
    assert driver is not None
    assert driver.status is Status.BUSY
    assert b.live.current_driver("d4") is None
    await restart()
    await recovered(b, "d4", lambda d: d.status is Status.BUSY)
    assert b.cache.fills >= 2


async def test_redis_killed_the_cache_steps_aside_and_fills_again(
    replicas: tuple[Replica, Replica], private_redis: RedisServer
) -> None:
    a, b = replicas

    async def restart() -> None:
        private_redis.start()

    await outage_then_recovery(a, b, private_redis.kill, restart)


async def test_redis_hung_the_cache_stops_serving_within_the_bound(
    replicas: tuple[Replica, Replica], private_redis: RedisServer
) -> None:
    """SIGSTOP: the connection stays open and silent. Entries stop being served once the
    last answered PING is older than the bound, before the bus declares the connection
    dead; after SIGCONT the keys A could not write are dropped and B caches the new state."""
    a, b = replicas

    async def restart() -> None:
        private_redis.resume()

    try:
        await outage_then_recovery(a, b, private_redis.pause, restart)
    finally:
        private_redis.resume()


@pytest.fixture
async def servers(
    private_redis: RedisServer, postgres_url: str
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two production servers (build_services, default read cache) on one database and Redis."""
    settings = replica_settings(postgres_url, private_redis)
    a = await start_server(settings, await build_services(settings))
    try:
        b = await start_server(settings, await build_services(settings))
        try:
            yield a, b
        finally:
            await b.stop(0)
    finally:
        await a.stop(0)


async def test_get_driver_on_the_other_server_follows_status_and_erasure(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """The served wiring: GetDriver on B answers from B's cache (no wait), and a status change
    and an erasure made through A reach it within the default bound (1 s)."""
    a, b = servers
    bound_s = ServerSettings().read_cache_staleness
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
    ):
        drivers_a = pb_grpc.DriverServiceStub(to_a)
        drivers_b = pb_grpc.DriverServiceStub(to_b)
        update = pb.LocationUpdate(driver_id="g1", latitude=52.5, longitude=13.4)
        update.timestamp.FromNanoseconds(time.time_ns())
        summary = await drivers_a.UploadLocations(iter([update]), timeout=5)
        assert summary.persisted_count == 1
        for _ in range(2):
            reply = await drivers_b.GetDriver(pb.GetDriverRequest(driver_id="g1"), timeout=5)
            assert reply.status == "AVAILABLE"
        assert b.tracking.current_driver("g1") is not None, "B did not cache the driver"

        session = drivers_a.DriverSession(timeout=10)
        await session.write(
            pb.DriverEvent(status_change=pb.DriverStatusChange(driver_id="g1", new_status="BUSY"))
        )
        await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing()))
        assert (await session.read()).HasField("pong")  # the status change is committed
        changed = time.monotonic()
        while True:
            reply = await drivers_b.GetDriver(pb.GetDriverRequest(driver_id="g1"), timeout=5)
            if reply.status == "BUSY":
                break
            assert time.monotonic() - changed < bound_s + SLACK_S, "B kept the old status"
            await asyncio.sleep(0.01)
        await session.done_writing()

        history = hpb_grpc.HistoryServiceStub(to_a)
        await history.ForgetDriver(hpb.ForgetDriverRequest(driver_id="g1"), timeout=10)
        erased = time.monotonic()
        code = grpc.StatusCode.OK
        while code == grpc.StatusCode.OK:
            assert time.monotonic() - erased < bound_s + SLACK_S, "B still serves the erased"
            await asyncio.sleep(0.01)
            call = drivers_b.GetDriver(pb.GetDriverRequest(driver_id="g1"), timeout=5)
            code = await call.code()
        assert code == grpc.StatusCode.NOT_FOUND
        assert b.tracking.current_driver("g1") is None


async def test_a_backlog_longer_than_the_ping_deadline_is_not_a_dead_connection(
    private_redis: RedisServer,
) -> None:
    """The reader PINGs while messages flow; a PONG queued behind a backlog that takes longer
    than `idle_ping_s` to handle must not end the connection (its messages would be lost)."""
    bus = RedisBus(
        create_redis_client(private_redis.url), "bl:", idle_ping_s=0.2, ping_every_s=0.05,
        close_client=True,
    )  # fmt: skip
    publisher = create_redis_client(private_redis.url)
    received: list[bytes] = []

    def slow_handler(payload: bytes) -> None:
        time.sleep(0.002)  # the reader is busy for ~0.8 s in all
        received.append(payload)

    try:
        await bus.subscribe_channel(b"bl:work", slow_handler)
        assert bus.connects == 1
        async with publisher.pipeline(transaction=False) as pipe:
            for i in range(400):
                pipe.publish("bl:work", str(i))
            await pipe.execute()
        await eventually(lambda: len(received) == 400, 10, "every message of the backlog")
        assert bus.connects == 1, "the busy connection was dropped as dead"
        assert received == [str(i).encode() for i in range(400)]
    finally:
        await publisher.aclose()
        await bus.close()


def _read_cache_figures(metrics: ServiceMetrics) -> dict[str, float]:
    """The driver_service_read_cache_* samples of a /metrics scrape, by name."""
    figures = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("driver_service_read_cache_"):
            name, value = line.split()
            figures[name.removeprefix("driver_service_read_cache_")] = float(value)
    return figures


async def test_the_read_cache_reports_its_hits_fills_and_whether_it_serves(
    private_redis: RedisServer, postgres_url: str
) -> None:
    """An operator sees whether the cache answers reads (hits, fills, size) and when it has
    stepped aside (Redis hung: every read goes to Redis or the store)."""
    settings = replica_settings(postgres_url, private_redis)
    metrics = ServiceMetrics()
    server = await start_server(settings, await build_services(settings, metrics), metrics)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            drivers = pb_grpc.DriverServiceStub(channel)
            update = pb.LocationUpdate(driver_id="m1", latitude=52.5, longitude=13.4)
            update.timestamp.FromNanoseconds(time.time_ns())
            assert (await drivers.UploadLocations(iter([update]), timeout=5)).persisted_count == 1
            for _ in range(3):
                await drivers.GetDriver(pb.GetDriverRequest(driver_id="m1"), timeout=5)
        figures = _read_cache_figures(metrics)
        assert figures["entries"] == 1, figures
        assert figures["fills_total"] == 1, figures
        assert figures["hits_total"] >= 2, figures
        assert figures["evictions_total"] == 0, figures
        assert figures["serving"] == 1, figures
        private_redis.pause()
        try:
            bound_s = settings.read_cache_staleness
            await eventually(
                lambda: _read_cache_figures(metrics)["serving"] == 0,
                bound_s + SLACK_S,
                "the cache to say it no longer serves",
            )
        finally:
            private_redis.resume()
    finally:
        await server.stop(0)
