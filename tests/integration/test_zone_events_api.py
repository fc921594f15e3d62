"""Zones and events through a real server (built as production builds it) with token auth:
ZoneService CRUD and its errors, events from real UploadLocations (enter, exit, dwell, a zone
changed mid-route, out-of-order and duplicate fixes, online/offline), WatchEvents replay and
follow across the hand-over under load, and every auth rule of both services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service._gen.driver.v1 import zones_pb2_grpc as zpb_grpc
from driver_service.app.events import EventRetention
from driver_service.app.pacing import Pacer
from driver_service.security import TokenIssuer
from driver_service.server.composition import Services, build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server
from tests.helpers.redis import RedisServer
from tests.helpers.stores import STORE_KINDS

SECRET = b"zones-events-test-secret-32-bytes!!!"
S = 10**9
#: Fix times start ten minutes ago (within the accepted window), one second apart.
T0 = time.time_ns() - 600 * S
CENTRE = (52.0, 13.0)
OUT = 52.05
SQUARE = (
    '{"type":"Polygon","coordinates":[[[12.99,51.99],[13.01,51.99],[13.01,52.01],'
    "[12.99,52.01],[12.99,51.99]]]}"
)


@dataclass
class Api:
    running: RunningServer
    services: Services
    channel: grpc.aio.Channel
    issuer: TokenIssuer

    def md(self, *scopes: str, driver: str | None = None) -> tuple[tuple[str, str]]:
        if driver is not None:
            token = self.issuer.issue_driver(driver)
        else:
            token = self.issuer.issue_service(scopes)
        return (("authorization", f"Bearer {token}"),)

    @property
    def zones(self) -> zpb_grpc.ZoneServiceStub:
        return zpb_grpc.ZoneServiceStub(self.channel)

    @property
    def events(self) -> epb_grpc.EventServiceStub:
        return epb_grpc.EventServiceStub(self.channel)

    @property
    def drivers(self) -> pb_grpc.DriverServiceStub:
        return pb_grpc.DriverServiceStub(self.channel)

    async def upload(self, driver_id: str, fixes: list[tuple[float, float]]) -> pb.UploadSummary:
        """(seconds after T0, latitude) at longitude 13.0, acknowledged once committed."""
        msgs = []
        for t, lat in fixes:
            msg = pb.LocationUpdate(driver_id=driver_id, latitude=lat, longitude=13.0)
            msg.timestamp.FromNanoseconds(T0 + int(t * S))
            msgs.append(msg)
        summary: pb.UploadSummary = await self.drivers.UploadLocations(
            iter(msgs), metadata=self.md("drivers:write")
        )
        return summary

    async def logged(self, after: int = 0) -> list[epb.Event]:
        """Everything logged so far, read back from the store."""
        rows = await self.services.events._log.read_events(after, 100_000)
        return [
            epb.Event(id=r.event_id, type=r.event.type.value, driver_id=r.event.driver_id,
                      zone_id=r.event.zone_id)
            for r in rows
        ]  # fmt: skip


@pytest.fixture
def stale_after() -> float:
    """Long enough for fixes from ten minutes ago; the offline test parametrizes it."""
    return 3600.0


@pytest.fixture
def store_kind() -> str:
    """SQLite; the tests of the feed's hand-over parametrize it (STORE_KINDS)."""
    return "sqlite"


@pytest.fixture
def settings(
    tmp_path: Path, stale_after: float, store_kind: str, request: pytest.FixtureRequest
) -> ServerSettings:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    settings = ServerSettings(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        data_dir=tmp_path,
        insecure=True,
        token_secret_file=secret,
        stale_after=stale_after,
        rate_limit=0,
    )
    if store_kind == "sqlite":
        return settings
    redis: RedisServer = request.getfixturevalue("private_redis")
    return replace(settings, store=request.getfixturevalue("postgres_url"), bus=redis.url)


@pytest.fixture
async def api(settings: ServerSettings) -> AsyncIterator[Api]:
    services = await build_services(settings)
    running = await start_server(settings, services)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Api(running, services, channel, TokenIssuer.from_secret(SECRET))
    finally:
        await channel.close()
        await running.stop(0)


def circle(zone_id: str = "", radius_m: float = 500.0, dwell_s: int = 0) -> zpb.Zone:
    zone = zpb.Zone(
        id=zone_id,
        name="Airport",
        labels=["airport"],
        circle=zpb.Circle(latitude=CENTRE[0], longitude=CENTRE[1], radius_m=radius_m),
    )
    if dwell_s:
        zone.dwell.CopyFrom(Duration(seconds=dwell_s))
    return zone


def kinds(events: list[epb.Event]) -> list[tuple[str, str, str]]:
    return [(e.type, e.driver_id, e.zone_id) for e in events]


async def collect(call: grpc.aio.UnaryStreamCall[object, epb.Event], n: int) -> list[epb.Event]:
    got: list[epb.Event] = []
    # Generous: a watcher short of an event waits for it until then (a gap fails the test
    # here), and the load test's six watchers of 600 events each on PostgreSQL share a
    # loaded machine with other tests.
    async with asyncio.timeout(60):
        async for event in call:
            got.append(event)
            if len(got) == n:
                break
    call.cancel()
    return got


async def test_zone_crud_and_its_errors(api: Api) -> None:
    md = api.md("zones")
    created = await api.zones.CreateZone(zpb.CreateZoneRequest(zone=circle()), metadata=md)
    assert created.id.startswith("z-")
    assert created.version == 1
    assert created.circle.radius_m == 500.0
    square = zpb.Zone(id="sq", name="Square", geojson=SQUARE)
    await api.zones.CreateZone(zpb.CreateZoneRequest(zone=square), metadata=md)
    got = await api.zones.GetZone(zpb.GetZoneRequest(id="sq"), metadata=md)
    assert got.geojson.startswith('{"type":"Polygon"')
    listed = await api.zones.ListZones(zpb.ListZonesRequest(page_size=1), metadata=md)
    assert len(listed.zones) == 1
    assert listed.next_page_token
    rest = await api.zones.ListZones(
        zpb.ListZonesRequest(page_size=1, page_token=listed.next_page_token), metadata=md
    )
    assert [z.id for z in [*listed.zones, *rest.zones]] == sorted([created.id, "sq"])
    airport = await api.zones.ListZones(zpb.ListZonesRequest(labels=["airport"]), metadata=md)
    assert [z.id for z in airport.zones] == [created.id]

    async def code_of(call: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call  # type: ignore[misc]
        return info.value.code(), info.value.details() or ""

    bow_tie = zpb.Zone(
        id="bad",
        geojson='{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}',
    )
    code, details = await code_of(
        api.zones.CreateZone(zpb.CreateZoneRequest(zone=bow_tie), metadata=md)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "self-intersection" in details
    code, details = await code_of(
        api.zones.CreateZone(zpb.CreateZoneRequest(zone=zpb.Zone(id="x")), metadata=md)
    )
    assert (code, "shape" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    code, _ = await code_of(api.zones.CreateZone(zpb.CreateZoneRequest(zone=square), metadata=md))
    assert code is grpc.StatusCode.ALREADY_EXISTS
    code, _ = await code_of(api.zones.GetZone(zpb.GetZoneRequest(id="nope"), metadata=md))
    assert code is grpc.StatusCode.NOT_FOUND
    stale = zpb.UpdateZoneRequest(zone=square, expected_version=7)
    code, details = await code_of(api.zones.UpdateZone(stale, metadata=md))
    assert (code, "version 1" in details) == (grpc.StatusCode.FAILED_PRECONDITION, True)
    updated = await api.zones.UpdateZone(
        zpb.UpdateZoneRequest(zone=square, expected_version=1), metadata=md
    )
    assert updated.version == 2
    await api.zones.DeleteZone(zpb.DeleteZoneRequest(id="sq", expected_version=2), metadata=md)
    code, _ = await code_of(api.zones.GetZone(zpb.GetZoneRequest(id="sq"), metadata=md))
    assert code is grpc.StatusCode.NOT_FOUND
    code, _ = await code_of(api.zones.CreateZone(zpb.CreateZoneRequest(zone=square), metadata=md))
    assert code is grpc.StatusCode.ALREADY_EXISTS  # ids are never reused


async def test_enter_dwell_exit_from_uploads_are_watched_live_and_replayed(api: Api) -> None:
    await api.zones.CreateZone(
        zpb.CreateZoneRequest(zone=circle("airport", dwell_s=60)), metadata=api.md("zones")
    )
    watch = api.events.WatchEvents(epb.WatchEventsRequest(), metadata=api.md("events"))
    await asyncio.sleep(0.2)  # the watch is following before the first update
    await api.upload("d1", [(0, OUT), (10, 52.0), (20, 52.0001)])
    # Out of order (older than the newest, inside) and duplicates: nothing.
    await api.upload("d1", [(5, 52.0), (20, 52.0001), (20, 52.0)])
    await api.upload("d1", [(80, 52.0), (90, OUT)])
    live = await collect(watch, 4)
    expected = [
        ("driver.online", "d1", ""),
        ("zone.enter", "d1", "airport"),
        ("zone.dwell", "d1", "airport"),
        ("zone.exit", "d1", "airport"),
    ]
    assert kinds(live) == expected
    assert live[1].location.latitude == 52.0
    assert live[1].time.ToNanoseconds() == T0 + 10 * S
    assert live[1].zone_version == 1
    assert kinds(await api.logged()) == expected  # nothing else was logged
    # Replay from the start, filtered by glob; then from the enter on.
    replay = api.events.WatchEvents(
        epb.WatchEventsRequest(after_id=0, types=["zone.*"]), metadata=api.md("events")
    )
    assert kinds(await collect(replay, 3)) == expected[1:]
    replay = api.events.WatchEvents(
        epb.WatchEventsRequest(after_id=live[1].id), metadata=api.md("events")
    )
    assert [e.id for e in await collect(replay, 2)] == [live[2].id, live[3].id]


async def test_a_zone_updated_mid_route_counts_from_the_next_update(api: Api) -> None:
    md = api.md("zones")
    await api.zones.CreateZone(zpb.CreateZoneRequest(zone=circle("z", 500.0)), metadata=md)
    await api.upload("d1", [(0, 52.0)])  # inside
    # Shrunk away from the driver (1.1 km north of the centre): exit on the next update.
    moved = zpb.Zone(id="z", circle=zpb.Circle(latitude=52.03, longitude=13.0, radius_m=500.0))
    await api.zones.UpdateZone(zpb.UpdateZoneRequest(zone=moved), metadata=md)
    await api.upload("d1", [(1, 52.0)])
    await api.upload("d1", [(2, 52.03)])  # into the moved zone
    await api.zones.DeleteZone(zpb.DeleteZoneRequest(id="z"), metadata=md)
    await api.upload("d1", [(3, 52.03)])
    events = await api.logged()
    assert kinds(events) == [
        ("driver.online", "d1", ""),
        ("zone.enter", "d1", "z"),
        ("zone.exit", "d1", "z"),
        ("zone.enter", "d1", "z"),
        ("zone.exit", "d1", "z"),
    ]
    rows = await api.services.events._log.read_events(0, 100)
    assert [r.event.zone_version for r in rows[1:]] == [1, 2, 2, 2]
    assert rows[-1].event.zone_deleted


@pytest.mark.parametrize("stale_after", [1.0])
async def test_online_status_and_offline(api: Api) -> None:
    watch = api.events.WatchEvents(
        epb.WatchEventsRequest(types=["driver.*"]), metadata=api.md("events")
    )
    await asyncio.sleep(0.2)
    now = time.time_ns()
    await api.upload("d1", [((now - T0) / S, OUT)])
    await api.services.tracking.change_status("d1", "BUSY")  # what DriverSession calls
    got = await collect(watch, 3)  # stale after 1 s: the sweeper logs the offline
    assert [e.type for e in got] == ["driver.online", "driver.status_changed", "driver.offline"]
    assert (got[1].old_status, got[1].new_status) == ("AVAILABLE", "BUSY")
    assert got[2].time.ToNanoseconds() >= got[0].time.ToNanoseconds() + S


@pytest.mark.parametrize("store_kind", STORE_KINDS)
@pytest.mark.parametrize("ring", [10_000, 16], ids=["ring", "small-ring"])
async def test_replay_then_follow_has_no_gap_or_duplicate_under_load(api: Api, ring: int) -> None:
    """Watchers join at random moments with after_id=0 while 20 drivers go in and out of a
    zone: each must see exactly the log, in order, across its hand-over from replay to live.
    With a small ring, each replays from the log first and hands over to the ring."""
    api.services.events._ring_size = ring
    await api.zones.CreateZone(zpb.CreateZoneRequest(zone=circle("z")), metadata=api.md("zones"))
    drivers = [f"d{i}" for i in range(20)]
    rounds = 30

    async def drive(driver_id: str) -> None:
        for step in range(rounds):
            await api.upload(driver_id, [(step * 2, 52.0 if step % 2 else OUT)])

    async def watcher(delay: float) -> list[int]:
        await asyncio.sleep(delay)
        call = api.events.WatchEvents(epb.WatchEventsRequest(after_id=0), metadata=api.md("events"))
        expected = len(drivers) * rounds  # online, then an enter or an exit per step
        return [e.id for e in await collect(call, expected)]

    results = await asyncio.gather(
        *(drive(d) for d in drivers), *(watcher(0.05 * i) for i in range(6))
    )
    logged = [e.id for e in await api.logged()]
    assert len(logged) == len(drivers) * rounds
    for ids in results[len(drivers) :]:
        assert ids == logged


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_a_slow_watcher_falls_back_to_the_log(api: Api) -> None:
    api.services.events._ring_size = 5  # the ring moves past the slow watcher at once
    await api.zones.CreateZone(zpb.CreateZoneRequest(zone=circle("z")), metadata=api.md("zones"))
    call = api.events.WatchEvents(epb.WatchEventsRequest(), metadata=api.md("events"))
    await asyncio.sleep(0.2)
    for step in range(40):
        await api.upload("d1", [(step, 52.0 if step % 2 else OUT)])
    got = await collect(call, 40)
    assert [e.id for e in got] == [e.id for e in await api.logged()]


async def test_auth_rules_of_zones_and_events(api: Api) -> None:
    await api.upload("d1", [(0, OUT)])
    await api.upload("d2", [(0, OUT)])

    async def refused(call: object) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call  # type: ignore[misc]
        return info.value.code()

    denied = grpc.StatusCode.PERMISSION_DENIED
    zone_calls = [
        lambda md: api.zones.CreateZone(zpb.CreateZoneRequest(zone=circle("a")), metadata=md),
        lambda md: api.zones.GetZone(zpb.GetZoneRequest(id="a"), metadata=md),
        lambda md: api.zones.ListZones(zpb.ListZonesRequest(), metadata=md),
        lambda md: api.zones.UpdateZone(zpb.UpdateZoneRequest(zone=circle("a")), metadata=md),
        lambda md: api.zones.DeleteZone(zpb.DeleteZoneRequest(id="a"), metadata=md),
    ]
    everything_else = api.md("drivers:read", "drivers:write", "dispatch", "events")
    for call in zone_calls:
        assert await refused(call(everything_else)) is denied
        assert await refused(call(api.md(driver="d1"))) is denied
    for call in zone_calls:  # and with the scope, each works (in order: create ... delete)
        await call(api.md("zones"))
    assert (
        await refused(api.zones.GetZone(zpb.GetZoneRequest(id="a"), metadata=()))
        is grpc.StatusCode.UNAUTHENTICATED
    )

    async def first(md: tuple[tuple[str, str]], **request: object) -> epb.Event:
        call = api.events.WatchEvents(epb.WatchEventsRequest(**request), metadata=md)
        return (await collect(call, 1))[0]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first(api.md("drivers:read", "zones", "dispatch"), after_id=0)
    assert info.value.code() is denied
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first(api.md(driver="d1"), after_id=0, driver_ids=["d2"])
    assert info.value.code() is denied
    # A driver token sees only its own driver's events, whatever it asks for.
    assert (await first(api.md(driver="d2"), after_id=0)).driver_id == "d2"
    assert (await first(api.md(driver="d1"), after_id=0, driver_ids=["d1"])).driver_id == "d1"
    assert (await first(api.md("events"), after_id=0)).driver_id == "d1"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first(api.md("events"), after_id=0, types=["zone.entr*"])
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_retention_cuts_the_log_and_an_older_after_id_is_out_of_range(api: Api) -> None:
    """Expired events go (a prefix of the log, never the newest); a replay from an id they
    removed is OUT_OF_RANGE naming the oldest id available; `replay_only` ends the stream."""
    md = api.md("events")
    await api.zones.CreateZone(zpb.CreateZoneRequest(zone=circle("air")), metadata=api.md("zones"))
    await api.upload("ret-1", [(0, OUT), (1, CENTRE[0]), (2, OUT)])
    old = await api.logged()
    time.sleep(0.01)
    cutoff = time.time_ns()
    await api.upload("ret-1", [(3, CENTRE[0]), (4, OUT)])
    kept = (await api.logged())[len(old) :]
    assert len(old) == 3
    assert len(kept) == 2

    # The retention's clock an hour past the cutoff: only the first upload's events expire.
    rests: list[float] = []

    async def rest(seconds: float) -> None:
        rests.append(seconds)

    retention = EventRetention(
        api.services.events._log, 3600, lambda: cutoff + 3600 * S, pacer=Pacer(sleep=rest)
    )
    assert await retention.expire_once() == 3
    assert rests  # paced as history's retention is
    assert retention.pacer.done == 3
    assert [e.id for e in await api.logged()] == [e.id for e in kept]

    async def replay(after: int) -> list[epb.Event]:
        request = epb.WatchEventsRequest(after_id=after, replay_only=True)
        async with asyncio.timeout(10):
            return [e async for e in api.events.WatchEvents(request, metadata=md)]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await replay(old[0].id)
    assert info.value.code() is grpc.StatusCode.OUT_OF_RANGE
    assert f"oldest event available is {kept[0].id}" in (info.value.details() or "")
    assert [e.id for e in await replay(kept[0].id - 1)] == [e.id for e in kept]
    assert [e.id for e in await replay(0)] == [e.id for e in kept]  # 0: all that is retained
    # Everything expired: the newest event stays, so how far the log was cut is still known.
    later = EventRetention(api.services.events._log, 3600, lambda: time.time_ns() + 7200 * S)
    assert await later.expire_once() == 1
    assert [e.id for e in await replay(0)] == [kept[-1].id]
    assert [e.id for e in await replay(kept[0].id)] == [kept[-1].id]  # nothing lost after it
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await replay(kept[0].id - 1)
    assert info.value.code() is grpc.StatusCode.OUT_OF_RANGE
