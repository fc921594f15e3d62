"""The event log end to end, with real `serve` subprocesses: SIGKILL in the middle of event
production loses no event of an acknowledged update, and three replicas on one PostgreSQL +
Redis log each event exactly once however a driver's updates are spread over them.

The drives cross a 500 m circle on every fix (far outside, then its centre, and so on, a
second apart): far beyond the hysteresis band, so each fix after the first is one crossing,
and the events an acknowledged fix must have caused are known exactly: `zone.enter` for the
odd fixes, `zone.exit` for the even ones (and `driver.online` for the first)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service._gen.driver.v1 import zones_pb2_grpc as zpb_grpc
from tests.helpers.postgres import PostgresServer, create_database
from tests.helpers.redis import RedisServer
from tests.helpers.server_process import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

S = 10**9
BASE_NS = (time.time_ns() // S - 3600) * S
CENTRE = (52.0, 13.0)
OUTSIDE = 52.05  # ~5.5 km north of the centre
#: The fixes are an hour old: keep the drivers online (no driver.offline in between).
FLAGS = ("--stale-after", "86400", "--rate-limit", "0")


def crossing(driver_id: str, i: int) -> pb.LocationUpdate:
    """Fix `i` of a drive: outside for even `i`, at the centre for odd."""
    msg = pb.LocationUpdate(
        driver_id=driver_id, latitude=CENTRE[0] if i % 2 else OUTSIDE, longitude=CENTRE[1]
    )
    msg.timestamp.FromNanoseconds(BASE_NS + i * S)
    return msg


def expected(i: int) -> str:
    return "zone.enter" if i % 2 else "zone.exit"


async def create_circle(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        zone = zpb.Zone(
            id="hub", name="hub",
            circle=zpb.Circle(latitude=CENTRE[0], longitude=CENTRE[1], radius_m=500),
        )  # fmt: skip
        await zpb_grpc.ZoneServiceStub(channel).CreateZone(zpb.CreateZoneRequest(zone=zone))


async def upload_one(stub: pb_grpc.DriverServiceStub, msg: pb.LocationUpdate) -> bool:
    """True once the fix is acknowledged as durably stored."""
    summary = await stub.UploadLocations(iter([msg]), timeout=10)
    return bool(summary.persisted_count == 1)


async def the_log(target: str) -> list[epb.Event]:
    async with grpc.aio.insecure_channel(target) as channel:
        request = epb.WatchEventsRequest(after_id=0, replay_only=True)
        async with asyncio.timeout(30):
            return [e async for e in epb_grpc.EventServiceStub(channel).WatchEvents(request)]


def by_driver(events: list[epb.Event]) -> dict[str, list[epb.Event]]:
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "event ids not strictly increasing"
    drivers: dict[str, list[epb.Event]] = defaultdict(list)
    for e in events:
        drivers[e.driver_id].append(e)
    return drivers


def check_drive(events: list[epb.Event], acked: int, may_have: int) -> None:
    """A drive's events: online once, then one crossing per fix 1..`acked` (each exactly
    once, in fix order) and possibly those of fixes up to `may_have` (sent, committed,
    but the acknowledgement lost to the kill)."""
    assert [e.type for e in events[:1]] == ["driver.online"]
    zone = events[1:]
    times = [(e.time.ToNanoseconds() - BASE_NS) // S for e in zone]
    assert times == list(range(1, len(zone) + 1)), f"a crossing missing or twice: {times}"
    assert [e.type for e in zone] == [expected(i) for i in times]
    assert all(e.zone_id == "hub" for e in zone)
    assert acked <= len(zone) <= may_have, (acked, len(zone), may_have)


async def test_sigkill_during_event_production_loses_no_acknowledged_event(
    launcher: Launcher, data_dir: Path
) -> None:
    server = launcher.start(data_dir, *FLAGS)
    await create_circle(server.target)
    drivers = [f"crash-{n}" for n in range(16)]
    acked: dict[str, int] = dict.fromkeys(drivers, -1)
    sent: dict[str, int] = dict.fromkeys(drivers, -1)

    async def drive(driver_id: str, stub: pb_grpc.DriverServiceStub) -> None:
        for i in range(100_000):
            sent[driver_id] = i
            try:
                if not await upload_one(stub, crossing(driver_id, i)):
                    return
            except grpc.aio.AioRpcError:
                return  # the server is gone
            acked[driver_id] = i

    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        tasks = [asyncio.create_task(drive(d, stub)) for d in drivers]
        await asyncio.sleep(2.0)
        server.kill()  # SIGKILL, with every drive mid-upload
        await asyncio.gather(*tasks)
    assert server.proc.returncode == -9
    assert min(acked.values()) >= 4, "too few crossings before the kill to test anything"

    restarted = launcher.start(data_dir, *FLAGS)
    drives = by_driver(await the_log(restarted.target))
    for driver_id in drivers:
        check_drive(drives[driver_id], acked[driver_id], sent[driver_id])
    total = sum(acked.values())
    print(f"\nacknowledged crossings before SIGKILL: {total}, all {total} in the log")


async def test_three_replicas_log_each_event_exactly_once(
    launcher: Launcher, tmp_path: Path, postgres_server: PostgresServer, private_redis: RedisServer
) -> None:
    postgres_server.start()
    store = await create_database(postgres_server)
    replicas: list[ServerProcess] = []
    for n in range(3):
        data = tmp_path / f"replica-{n}"
        data.mkdir()
        replicas.append(launcher.start(data, "--store", store, "--bus", private_redis.url, *FLAGS))
    await create_circle(replicas[0].target)
    fixes = 24
    drivers = [f"spread-{n}" for n in range(12)]
    channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
    stubs = [pb_grpc.DriverServiceStub(c) for c in channels]

    async def drive(n: int, driver_id: str) -> None:
        for i in range(fixes):  # fix i on replica (n + i) % 3: every driver on all three
            assert await upload_one(stubs[(n + i) % 3], crossing(driver_id, i))

    try:
        await asyncio.gather(*(drive(n, d) for n, d in enumerate(drivers)))
    finally:
        for channel in channels:
            await channel.close()
    logs = [await the_log(r.target) for r in replicas]
    assert [e.id for e in logs[1]] == [e.id for e in logs[0]] == [e.id for e in logs[2]]
    drives = by_driver(logs[0])
    assert sorted(drives) == sorted(drivers)
    for driver_id in drivers:
        check_drive(drives[driver_id], fixes - 1, fixes - 1)
