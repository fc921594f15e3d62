"""Erasure leaves nothing of the driver in any store: a production-built server (SQLite with
its in-memory index and offer book; PostgreSQL with a private Redis for live state, index
and commands) holds a driver's history, current state, tracker state, logged events, index
entries and queued commands; after ForgetDriver, every table and every Redis key is read
back in full and the driver's id appears nowhere, while another driver's data is intact
(the same scan finds it: the check can fail)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc
from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service._gen.driver.v1 import zones_pb2_grpc as zpb_grpc
from driver_service.adapters.redis.connection import create_redis_client
from driver_service.app.events import EventFeed
from driver_service.domain import DriverNotFound
from driver_service.ports import Forgotten
from driver_service.resilience.guard import DependencyUnavailable
from driver_service.server.composition import build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server
from driver_service.wire import pb_to_location
from tests.helpers.redis import RedisServer
from tests.helpers.stores import STORE_KINDS, replica_settings, store_settings
from tests.helpers.waiting import eventually

S = 10**9
VICTIM = "erase-me-7f3a"
KEPT = "keep-me-91c2"
CENTRE = (52.0, 13.0)


@dataclass
class Setup:
    running: RunningServer
    channel: grpc.aio.Channel
    settings: ServerSettings
    redis_url: str | None

    async def everything(self) -> list[str]:
        """Every row of every table and every Redis key with its contents, as text."""
        dump: list[str] = []
        if self.settings.uses_postgres:
            assert self.settings.store is not None
            con = await asyncpg.connect(self.settings.store)
            try:
                tables = await con.fetch(
                    "SELECT schemaname, tablename FROM pg_tables"
                    " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
                )
                assert len(tables) > 5
                for t in tables:
                    rows = await con.fetch(f'SELECT * FROM "{t[0]}"."{t[1]}"')
                    dump += [f"{t[1]}: {tuple(r)!r}" for r in rows]
            finally:
                await con.close()
        else:
            con_s = sqlite3.connect(self.settings.sqlite_path())
            try:
                names = [
                    n for (n,) in con_s.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                assert {"location_history", "drivers", "driver_trackers", "events"} <= set(names)
                for name in names:
                    rows = con_s.execute(f'SELECT * FROM "{name}"').fetchall()
                    dump += [f"{name}: {row!r}" for row in rows]
            finally:
                con_s.close()
        if self.redis_url is not None:
            dump += await redis_dump(self.redis_url)
        return dump


async def redis_dump(url: str) -> list[str]:
    """Every Redis key with its contents, as text."""
    dump: list[str] = []
    client = create_redis_client(url)
    try:
        async for key in client.scan_iter(count=1000):
            kind = (await client.type(key)).decode()
            content: object
            if kind == "hash":
                content = await client.hgetall(key)
            elif kind == "zset":
                content = await client.zrange(key, 0, -1)
            elif kind == "set":
                content = await client.smembers(key)
            elif kind == "list":
                content = await client.lrange(key, 0, -1)
            elif kind == "string":
                content = await client.get(key)
            else:
                content = kind
            dump.append(f"redis {key!r}: {content!r}")
    finally:
        await client.aclose()
    return dump


@pytest.fixture(params=STORE_KINDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> ServerSettings:
    return store_settings(request, tmp_path)


@pytest.fixture
async def setup(settings: ServerSettings) -> AsyncIterator[Setup]:
    redis_url = None if settings.bus == "memory" else settings.bus
    running = await start_server(settings, await build_services(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Setup(running, channel, settings, redis_url)
    finally:
        await channel.close()
        await running.stop(0)


def route(driver_id: str, t0: int, n: int) -> list[pb.LocationUpdate]:
    """n fixes a second apart, into the zone and out of it (events with positions)."""
    msgs = []
    for i in range(n):
        lat = CENTRE[0] - 0.02 + 0.04 * i / (n - 1)
        msg = pb.LocationUpdate(driver_id=driver_id, latitude=lat, longitude=CENTRE[1])
        msg.timestamp.FromNanoseconds(t0 + i * S)
        msgs.append(msg)
    return msgs


async def test_forget_leaves_nothing_of_the_driver_in_any_store(setup: Setup) -> None:
    channel = setup.channel
    zones = zpb_grpc.ZoneServiceStub(channel)
    await zones.CreateZone(
        zpb.CreateZoneRequest(
            zone=zpb.Zone(
                id="centre",
                name="Centre",
                circle=zpb.Circle(latitude=CENTRE[0], longitude=CENTRE[1], radius_m=500),
            )
        ),
        timeout=5,
    )
    drivers = pb_grpc.DriverServiceStub(channel)
    t0 = time.time_ns() - 120 * S
    for driver_id in (KEPT, VICTIM):  # the victim's events after the kept driver's
        summary = await drivers.UploadLocations(iter(route(driver_id, t0, 60)), timeout=10)
        assert summary.persisted_count == 60
    dispatch = dpb_grpc.DispatchServiceStub(channel)
    for driver_id in (VICTIM, KEPT):  # no session: both wait queued
        sent = await dispatch.SendCommand(
            dpb.SendCommandRequest(
                driver_id=driver_id,
                command=pb.ServerCommand(
                    ride_offer=pb.RideOffer(offer_id=f"offer-{driver_id}", pickup_address="Main 1")
                ),
                ttl=Duration(seconds=600),
            ),
            timeout=5,
        )
        assert sent.state == dpb.COMMAND_STATE_QUEUED

    before = await setup.everything()
    assert any(VICTIM in line for line in before)
    assert any("events" in line and VICTIM in line for line in before)

    history = hpb_grpc.HistoryServiceStub(channel)
    answer = await history.ForgetDriver(hpb.ForgetDriverRequest(driver_id=VICTIM), timeout=10)
    assert answer.history_fixes == 60
    assert answer.driver_records == 1
    assert answer.queued_commands == 1
    assert answer.tracker_states == 1
    assert answer.events >= 3  # online, zone enter, zone exit
    # Memory: the index entry. Redis: the live hash and the index's entry, GEO, seen.
    assert answer.live_entries == (4 if setup.redis_url else 1)

    after = await setup.everything()
    left = [line for line in after if VICTIM in line]
    assert left == []
    # Nor does the event stream replay the driver's events (with positions) from memory:
    # the feed held them in its ring, which a replay from the start reads.
    replayed = [
        event.driver_id
        async for event in epb_grpc.EventServiceStub(channel).WatchEvents(
            epb.WatchEventsRequest(after_id=0, replay_only=True), timeout=10
        )
    ]
    assert KEPT in replayed
    assert VICTIM not in replayed
    assert sum(KEPT in line for line in after) >= sum(KEPT in line for line in before) > 60

    # Nothing answers for the driver any more, in any service.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drivers.GetDriver(pb.GetDriverRequest(driver_id=VICTIM), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await dispatch.GetCommandStatus(
            dpb.GetCommandStatusRequest(command_id=f"offer-{VICTIM}"), timeout=5
        )
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    nearby = await dispatch.FindNearbyDrivers(
        dpb.FindNearbyDriversRequest(
            latitude=CENTRE[0], longitude=CENTRE[1], radius_m=10_000, limit=10
        ),
        timeout=5,
    )
    assert [d.driver_id for d in nearby.drivers] == [KEPT]
    # A second erasure finds nothing: NOT_FOUND, and still nothing stored.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await history.ForgetDriver(hpb.ForgetDriverRequest(driver_id=VICTIM), timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert [line for line in await setup.everything() if VICTIM in line] == []


async def test_every_replica_drops_the_erased_driver_events_from_memory(
    postgres_url: str, private_redis: RedisServer
) -> None:
    """With replicas, each keeps copies of recent events in memory for WatchEvents: an
    erasure on one replica must drop the driver's from the others' too (a replay there
    would otherwise return its positions until newer events push them out)."""
    settings = replica_settings(postgres_url, private_redis)
    one = await build_services(settings)
    other = await build_services(settings)
    try:
        t0 = time.time_ns() - 120 * S
        for driver_id in (KEPT, VICTIM):  # driver.online each, with its position
            await one.tracking.repository.record_locations(
                [pb_to_location(update) for update in route(driver_id, t0, 5)]
            )
        last = await one.events.last_event_id()
        await eventually(lambda: other.events.head >= last, what="the other replica to follow")
        assert await replayed_drivers(other.events) == {KEPT, VICTIM}

        await one.history.forget(VICTIM, by="test")
        assert await replayed_drivers(one.events) == {KEPT}
        await eventually(
            lambda: all(e.event.driver_id != VICTIM for e in other.events._ring),
            what="the other replica to drop the victim's events",
        )
        assert await replayed_drivers(other.events) == {KEPT}
    finally:
        for services in (one, other):
            await services.close_events()
            await services.dispatch.close()
            await services.tracking.close()


async def replayed_drivers(feed: EventFeed) -> set[str]:
    """The drivers of every event a replay from the start returns."""
    return {
        event.event.driver_id async for event in feed.watch(0, lambda event: True, replay_only=True)
    }


async def test_an_erasure_whose_second_pass_fails_is_still_on_record_and_a_retry_completes_it(
    postgres_url: str, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Erasure clears live state, erases the store, then clears live state again. When Redis
    stops answering between the store and that second pass, the caller gets an error, and
    a retry answers NOT_FOUND (nothing is stored any more): the log line saying who erased
    the driver must have been written by the call that erased it, and the retry must leave
    nothing of the driver in Redis."""
    services = await build_services(replica_settings(postgres_url, private_redis))
    try:
        t0 = time.time_ns() - 120 * S
        for driver_id in (KEPT, VICTIM):
            await services.tracking.repository.record_locations(
                [pb_to_location(update) for update in route(driver_id, t0, 5)]
            )
        store = services.history.store
        erase = store.forget_driver

        async def erase_then_redis_hangs(driver_id: str) -> Forgotten:
            erased = await erase(driver_id)
            private_redis.pause()
            return erased

        store.forget_driver = erase_then_redis_hangs  # type: ignore[method-assign]
        # DependencyUnavailable: UNAVAILABLE to a caller (api/errors.py).
        with caplog.at_level("WARNING"), pytest.raises(DependencyUnavailable):
            await services.history.forget(VICTIM, by="privacy-officer")
        private_redis.resume()
        store.forget_driver = erase  # type: ignore[method-assign]
        messages = [r.getMessage() for r in caplog.records]
        erased = [
            m for m in messages if m.startswith(f"driver erased: {VICTIM} by privacy-officer")
        ]
        assert len(erased) == 1
        assert "history fixes 5" in erased[0]
        assert any("clearing its live state again failed" in m for m in messages)

        # The retry, as a client retries UNAVAILABLE: until Redis is found answering again.
        deadline = time.monotonic() + 10
        while True:
            try:
                await services.history.forget(VICTIM, by="privacy-officer")
            except DriverNotFound:
                break
            except DependencyUnavailable:
                assert time.monotonic() < deadline, "Redis was not found answering again"
                await asyncio.sleep(0.1)
            else:
                pytest.fail("a retry erased the driver again")
        dump = await redis_dump(private_redis.url)
        assert any(KEPT in line for line in dump)  # the dump sees a driver's keys
        assert [line for line in dump if VICTIM in line] == []
    finally:
        private_redis.resume()
        await services.close_events()
        await services.dispatch.close()
        await services.tracking.close()
