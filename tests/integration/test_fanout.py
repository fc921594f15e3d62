"""StreamLocation fan-out over a real socket: many watchers of a driver share one message per
update, so what each watcher receives must still be exactly its own driver's locations."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.server.running import RunningServer
from tests.helpers.waiting import eventually

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 3600) * NANOS
WATCHERS_PER_DRIVER = 20


def update(driver_id: str, n: int) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(
        driver_id=driver_id,
        latitude=n / 100,
        longitude=-n / 100 if driver_id == "fan-b" else n / 100,
        speed_mps=float(n),
        heading_degrees=float(n % 360),
    )
    msg.timestamp.FromNanoseconds(BASE_NS + n * 1_000_000)
    return msg


async def test_every_watcher_gets_exactly_its_drivers_updates_newest_last(
    stub: pb_grpc.DriverServiceStub, server: RunningServer
) -> None:
    drivers = ("fan-a", "fan-b")
    calls = {
        (d, i): stub.StreamLocation(pb.StreamLocationRequest(driver_id=d))
        for d in drivers
        for i in range(WATCHERS_PER_DRIVER)
    }
    received: dict[tuple[str, int], list[pb.LocationUpdate]] = {key: [] for key in calls}

    async def read(key: tuple[str, int], call: Any) -> None:
        async for msg in call:
            received[key].append(msg)

    readers = [asyncio.create_task(read(key, call)) for key, call in calls.items()]
    try:
        await eventually(
            lambda: server.tracking.watcher_count == len(calls), what="every subscription"
        )
        # One stream that alternates between the drivers: each commit publishes both.
        sent = [update(drivers[n % 2], n) for n in range(1, 13)]
        summary = await stub.UploadLocations(iter(sent), timeout=10)
        assert summary.persisted_count == len(sent)
        newest = {d: [m for m in sent if m.driver_id == d][-1] for d in drivers}
        await eventually(
            lambda: all(got and got[-1] == newest[key[0]] for key, got in received.items()),
            what="the newest update at every watcher",
        )
    finally:
        for call in calls.values():
            call.cancel()
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    for (driver_id, _), got in received.items():
        mine = [m for m in sent if m.driver_id == driver_id]
        # Slow watchers may skip to a newer one, never get another driver's or go back.
        assert all(m in mine for m in got), f"{driver_id} got another driver's update"
        stamps = [m.timestamp.ToNanoseconds() for m in got]
        assert stamps == sorted(set(stamps))
