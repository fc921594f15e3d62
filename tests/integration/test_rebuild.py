"""Derived state is rebuilt from the store, never trusted to survive: the in-memory index after
a restart on SQLite, Redis's live hashes and GEO index after Redis comes back empty (FLUSHALL,
or killed and restarted without persistence), on real servers over real gRPC; and a rebuild
that races live updates never puts older store data over them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.adapters.redis.connection import create_redis_client
from driver_service.adapters.redis.dispatch_index import RedisDriverIndex
from driver_service.adapters.redis.index_rebuild import LockLost, RedisRebuilder
from driver_service.adapters.redis.live import LiveStateRepository
from driver_service.app.history import LocationHistory
from driver_service.dispatch.memory_index import MemoryDriverIndex
from driver_service.dispatch.ports import DriverIndex
from driver_service.domain import Driver, Location, Status
from driver_service.server.composition import REDIS_PREFIX, build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server
from driver_service.wire import location_to_pb
from tests.helpers.redis import RedisServer

NS = 1_000_000_000
BERLIN = (52.52, 13.405)
ALL = ("AVAILABLE", "BUSY")


def fresh_ns() -> int:
    """A fix time a little in the past: fresh for dispatch (stale-after is 120 s)."""
    return time.time_ns() - 5 * NS


def at(driver_id: str, i: int, t_ns: int) -> Location:
    """Driver i of a fleet around Berlin, a few hundred metres apart."""
    return Location(driver_id, BERLIN[0] + i * 1e-3, BERLIN[1] + i * 1e-3, 3.0, 90.0, t_ns)


def update(location: Location) -> pb.LocationUpdate:
    return location_to_pb(location)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Poll an async check; return how long it took to hold, fail after `timeout_s`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# --- the merge rule, on both index adapters --------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def index(request: pytest.FixtureRequest) -> AsyncIterator[DriverIndex]:
    if request.param == "memory":
        yield MemoryDriverIndex()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.start()
    client = create_redis_client(server.url)
    try:
        yield RedisDriverIndex(client, prefix=request.getfixturevalue("redis_prefix"))
    finally:
        await client.aclose()


async def test_fill_merges_forward_and_never_revives_or_overrides_newer_state(
    index: DriverIndex,
) -> None:
    t = fresh_ns() - 60 * NS
    ms = 1_000_000  # Redis keeps OFFLINE times as seconds in a double: ties below ~1 us

    def driver(status: Status, seen: int, fix: int | None) -> Driver:
        fixed = None if fix is None else at("a", 0, t + fix * ms)
        return Driver("a", status, fixed, t + seen * ms)

    async def state() -> tuple[Status, float, int] | None:
        got = await index.get("a")
        return None if got is None else (got.status, got.latitude, (got.last_seen_at_ns - t) // ms)

    async def found() -> list[str]:
        hits = await index.nearby(*BERLIN, 5000, 10, {Status.AVAILABLE, Status.BUSY}, t - NS)
        return [h.driver.driver_id for h in hits]

    await index.fill([driver(Status.AVAILABLE, 10, 10)])  # empty index: added
    assert await state() == (Status.AVAILABLE, BERLIN[0], 10)
    assert await found() == ["a"]

    await index.put([driver(Status.BUSY, 20, 10)])  # a committed change after the read
    await index.fill([driver(Status.AVAILABLE, 15, 5)])  # the rebuild's older read lands
    assert await state() == (Status.BUSY, BERLIN[0], 20)

    await index.move([at("a", 1, t + 25 * ms)])  # a newer fix: seen 25, but the status is kept
    await index.fill([driver(Status.AVAILABLE, 25, 25)])  # as new as the entry: status kept
    assert await state() == (Status.BUSY, BERLIN[0] + 1e-3, 25)
    await index.fill([driver(Status.AVAILABLE, 26, 25)])  # the store saw a newer event
    assert await state() == (Status.AVAILABLE, BERLIN[0] + 1e-3, 26)

    await index.put([driver(Status.OFFLINE, 30, 25)])  # went offline
    assert await state() is None
    for seen in (28, 30):  # reads from before, or of the same event: not brought back
        await index.fill([driver(Status.AVAILABLE, seen, 25)])
        assert await state() is None
        assert await found() == []
    await index.fill([driver(Status.AVAILABLE, 40, 25)])  # back after going offline
    assert await state() == (Status.AVAILABLE, BERLIN[0], 40)
    await index.fill([driver(Status.OFFLINE, 50, 25)])  # the store says it left since
    assert await state() is None

    await index.fill([Driver("b", Status.OFFLINE, at("b", 0, t), t)])  # unknown and offline
    await index.fill([Driver("c", Status.BUSY, None, t)])  # known, but nowhere yet
    assert await index.get("b") is None
    assert await index.get("c") is not None
    assert await found() == []


# --- one process on SQLite: the index is filled before serving --------------------------------


async def test_sqlite_restart_finds_every_fresh_driver_at_once(tmp_path: Path) -> None:
    settings = ServerSettings(
        listen="127.0.0.1:0", admin_listen="", data_dir=tmp_path, insecure=True
    )
    t = fresh_ns()
    fleet = [at(f"d{i:02d}", i, t + i) for i in range(20)]
    old = Location("gone-stale", *BERLIN, 0.0, 0.0, t - 600 * NS)  # beyond stale-after

    services = await build_services(settings)
    running = await start_server(settings, services)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            summary = await pb_grpc.DriverServiceStub(channel).UploadLocations(
                iter([update(x) for x in [*fleet, old]]), timeout=10
            )
            assert summary.persisted_count == 21
        await running.tracking.change_status("d03", "BUSY")
    finally:
        await running.stop(0)

    services = await build_services(settings)  # same data dir: a restart
    running = await start_server(settings, services)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            dispatch = dpb_grpc.DispatchServiceStub(channel)
            nearby = await dispatch.FindNearbyDrivers(
                dpb.FindNearbyDriversRequest(
                    latitude=BERLIN[0], longitude=BERLIN[1], radius_m=10_000, statuses=ALL
                ),
                timeout=5,
            )
            described = await dispatch.DescribeDriver(
                dpb.DescribeDriverRequest(driver_id="d03"), timeout=5
            )
    finally:
        await running.stop(0)

    assert [d.driver_id for d in nearby.drivers] == [x.driver_id for x in fleet]
    assert {d.driver_id: d.status for d in nearby.drivers}["d03"] == "BUSY"
    assert (described.status, described.latitude, described.stale) == (
        "BUSY",
        fleet[3].latitude,
        False,
    )


# --- replicas on PostgreSQL + Redis: Redis comes back empty -----------------------------------


class Replica:
    """One production-built server on PostgreSQL + the test's private Redis."""

    def __init__(self, running: RunningServer, channel: grpc.aio.Channel) -> None:
        self.running = running
        self.channel = channel
        self.drivers = pb_grpc.DriverServiceStub(channel)
        self.dispatch = dpb_grpc.DispatchServiceStub(channel)

    async def nearby(self) -> dict[str, tuple[str, float]]:
        found = await self.dispatch.FindNearbyDrivers(
            dpb.FindNearbyDriversRequest(
                latitude=BERLIN[0], longitude=BERLIN[1], radius_m=20_000, limit=1000, statuses=ALL
            ),
            timeout=5,
        )
        return {d.driver_id: (d.status, d.latitude) for d in found.drivers}

    async def describe(self, driver_id: str) -> dpb.DispatchDriver:
        return await self.dispatch.DescribeDriver(
            dpb.DescribeDriverRequest(driver_id=driver_id), timeout=5
        )


@pytest.fixture
async def replica(postgres_url: str, private_redis: RedisServer) -> AsyncIterator[Replica]:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        admin_listen="",
        store=postgres_url,
        bus=private_redis.url,
        insecure=True,
    )
    services = await build_services(settings)
    running = await start_server(settings, services)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Replica(running, channel)
    finally:
        await running.stop(0)


async def test_redis_emptied_or_restarted_is_rebuilt_within_seconds(
    replica: Replica, private_redis: RedisServer
) -> None:
    t = fresh_ns()
    fleet = [at(f"d{i:03d}", i, t + i) for i in range(60)]
    summary = await replica.drivers.UploadLocations(iter([update(x) for x in fleet]), timeout=10)
    assert summary.persisted_count == len(fleet)
    await replica.running.tracking.change_status("d007", "BUSY")
    expected = {
        x.driver_id: ("BUSY" if x.driver_id == "d007" else "AVAILABLE", x.latitude) for x in fleet
    }

    async def all_found() -> bool:
        try:
            return await replica.nearby() == expected
        except grpc.aio.AioRpcError:
            return False  # during the outage, or while the connection is made again

    await until(all_found, 5.0, "the index to follow the upload")  # published after the ack
    admin = create_redis_client(private_redis.url, timeout_s=1.0)
    try:
        for how in ("FLUSHALL", "kill and restart"):
            if how == "FLUSHALL":
                await admin.flushall()
            else:
                private_redis.restart()  # same port, nothing kept
            assert await admin.exists(f"{REDIS_PREFIX}epoch") == 0
            took = await until(all_found, 8.0, f"dispatch to see every driver after {how}")
            print(f"after {how}: every driver found again in {took:.2f} s")

            async def marked() -> bool:  # written just after the last page
                return bool(await admin.exists(f"{REDIS_PREFIX}epoch"))

            await until(marked, 2.0, "the rebuild's marker")
            for x in fleet[::7]:
                view = await replica.describe(x.driver_id)
                assert (view.status, view.latitude, view.stale) == (*expected[x.driver_id], False)
                got = await replica.drivers.GetDriver(
                    pb.GetDriverRequest(driver_id=x.driver_id), timeout=5
                )
                assert (got.status, got.latitude, got.longitude) == (
                    expected[x.driver_id][0],
                    x.latitude,
                    x.longitude,
                )
            # The live hashes were rebuilt too (GetDriver alone would back-fill one per read).
            assert (
                await admin.hget(f"{REDIS_PREFIX}drv:d059", "lat")
                == repr(fleet[59].latitude).encode()
            )
    finally:
        await admin.aclose()


# --- a rebuild racing live updates ------------------------------------------------------------


class PausedStore:
    """The real store, but the rebuild stops after reading its first page until released, so
    updates can land between the rebuild's read and its write."""

    def __init__(self, inner: PostgresRepository) -> None:
        self.inner = inner
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        async for page in self.inner.drivers_seen_since(seen_since_ns, page_size):
            if not self.read.is_set():
                self.read.set()
                await self.release.wait()
            yield page


async def paused_rebuild_stack(
    postgres_url: str, redis: RedisServer
) -> tuple[PostgresRepository, Redis, LiveStateRepository, RedisDriverIndex, PausedStore]:
    """PostgreSQL with Redis live state and index over it, and the store seen through a
    PausedStore for a rebuild to read."""
    store = await PostgresRepository.open(postgres_url, min_size=1, max_size=4)
    client = create_redis_client(redis.url)
    live = LiveStateRepository(store, client, REDIS_PREFIX)
    return store, client, live, RedisDriverIndex(client, prefix=REDIS_PREFIX), PausedStore(store)


async def test_updates_during_a_rebuild_are_not_overwritten_by_its_older_reads(
    postgres_url: str, private_redis: RedisServer
) -> None:
    store, client, live, index, paused = await paused_rebuild_stack(postgres_url, private_redis)
    rebuilder = RedisRebuilder(
        client, paused, [live.fill, index.fill], prefix=REDIS_PREFIX, horizon_s=120, page_size=3
    )
    other = RedisRebuilder(
        client, store, [live.fill, index.fill], prefix=REDIS_PREFIX, horizon_s=120
    )
    try:
        t = fresh_ns()
        await store.record_locations([at("a", 0, t), at("b", 1, t), at("c", 2, t)])
        await store.set_status("b", Status.BUSY, t)

        rebuild = asyncio.ensure_future(rebuilder.rebuild_if_missing())
        await asyncio.wait_for(paused.read.wait(), 5)  # it has read a and b as they were
        assert await other.rebuild_if_missing() is None  # one rebuild at a time
        # Meanwhile, through the live path (durable first, then Redis): a moves on, b goes
        # offline, and c changes status.
        moved = at("a", 5, t + NS)
        assert await live.record_locations([moved]) == [moved]
        for unknown in await index.move([moved]):  # as IndexingBus does
            await index.put([await store.get_driver(unknown) or pytest.fail(unknown)])
        for driver_id, status in (("b", Status.OFFLINE), ("c", Status.BUSY)):
            changed = await live.set_status(driver_id, status, t + NS)
            await index.put([changed])
        paused.release.set()
        result = await asyncio.wait_for(rebuild, 5)

        assert result is not None
        assert result.drivers == 3
        assert await live.get_driver("a") == Driver("a", Status.AVAILABLE, moved, t + NS)
        a = await index.get("a")
        assert a is not None
        assert (a.latitude, a.last_seen_at_ns) == (moved.latitude, t + NS)
        assert await index.get("b") is None  # offline, not revived by the read from before
        b = await live.get_driver("b")
        assert b is not None
        assert b.status is Status.OFFLINE
        c = await index.get("c")
        assert c is not None
        assert c.status is Status.BUSY
        assert await client.get(f"{REDIS_PREFIX}epoch") is not None
        assert await client.exists(rebuilder.lock_key) == 0  # released
        assert await rebuilder.rebuild_if_missing() is None  # the marker stands: no rework

        # Redis emptied in the middle of a rebuild: the lock went with it, so the marker is
        # not written and the next check rebuilds again.
        await client.flushall()
        paused.read.clear()
        paused.release.clear()
        rebuild = asyncio.ensure_future(rebuilder.rebuild_if_missing())
        await asyncio.wait_for(paused.read.wait(), 5)
        await client.flushall()
        paused.release.set()
        with pytest.raises(LockLost):
            await asyncio.wait_for(rebuild, 5)
        assert await client.exists(rebuilder.marker_key) == 0
        assert (await other.rebuild_if_missing() or pytest.fail("no rebuild")).drivers == 3
        assert await index.get("a") == a
    finally:
        await client.aclose()
        await store.close()


async def test_a_rebuild_that_read_a_driver_before_its_erasure_does_not_bring_it_back(
    postgres_url: str, private_redis: RedisServer
) -> None:
    """A rebuild reads a page from the store, the driver is erased meanwhile (both of the
    erasure's passes over Redis, the store between them), then the rebuild merges its page:
    the erased driver must stay gone from Redis (its live hash would serve its last position
    for up to its week-long TTL, the index would find it nearby). Its neighbour in the page
    is rebuilt as usual, and a driver of the same id that reports afterwards is served as
    any new driver."""
    store, client, live, index, paused = await paused_rebuild_stack(postgres_url, private_redis)
    rebuilder = RedisRebuilder(
        client, paused, [live.fill, index.fill], prefix=REDIS_PREFIX, horizon_s=120
    )
    history = LocationHistory(store, forget_live=[live.forget, index.forget])
    try:
        t = fresh_ns()
        victim, neighbour = at("victim", 0, t), at("neighbour", 1, t)
        await store.record_locations([victim, neighbour])
        await client.flushall()  # Redis came back empty: the rebuild fills it
        rebuild = asyncio.ensure_future(rebuilder.rebuild_if_missing())
        await asyncio.wait_for(paused.read.wait(), 5)  # it has read both drivers
        erased = await history.forget("victim", by="test")
        assert erased.driver_records == 1
        paused.release.set()
        result = await asyncio.wait_for(rebuild, 5)

        assert result is not None
        assert result.drivers == 2
        assert await client.exists(live.key("victim")) == 0
        assert await live.get_driver("victim") is None
        assert await index.get("victim") is None
        assert await live.get_driver("neighbour") == Driver(
            "neighbour", Status.AVAILABLE, neighbour, t
        )
        assert await index.get("neighbour") is not None

        again = at("victim", 2, t + NS)
        assert await live.record_locations([again]) == [again]
        back = await live.get_driver("victim")
        assert back is not None
        assert back.location == again
        await index.put([back])
        assert await index.get("victim") is not None
    finally:
        await client.aclose()
        await store.close()
