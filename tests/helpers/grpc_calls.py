"""DriverService messages and calls on the raw generated stub, as a client sees the wire:
fixes stamped to the nanosecond, an upload of a list of them, a GetDriver; and for the event
log, drivers brought online (one `driver.online` event each) and the log replayed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc

NANOS = 1_000_000_000
#: An hour ago on a whole second, so every test timestamp is valid (not future, after 2000)
#: and fixes can carry arbitrary nanoseconds.
BASE_NS = (time.time_ns() // NANOS - 3600) * NANOS


def ts(ns: int) -> Timestamp:
    seconds, nanos = divmod(ns, NANOS)
    return Timestamp(seconds=seconds, nanos=nanos)


def ts_ns(stamp: Timestamp) -> int:
    return stamp.seconds * NANOS + stamp.nanos


def fix(
    driver_id: str,
    lat: float,
    lon: float,
    at_ns: int | None,
    speed: float = 5.0,
    heading: float = 90.0,
) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(
        driver_id=driver_id, latitude=lat, longitude=lon, speed_mps=speed, heading_degrees=heading
    )
    if at_ns is not None:
        msg.timestamp.CopyFrom(ts(at_ns))
    return msg


async def upload(
    stub: pb_grpc.DriverServiceStub, msgs: Iterable[pb.LocationUpdate]
) -> pb.UploadSummary:
    return await stub.UploadLocations(iter(list(msgs)), timeout=30)


async def get(stub: pb_grpc.DriverServiceStub, driver_id: str) -> pb.GetDriverResponse:
    return await stub.GetDriver(pb.GetDriverRequest(driver_id=driver_id), timeout=5)


async def online(
    channel: grpc.aio.Channel, drivers: Sequence[str], metadata: Sequence[tuple[str, str]] = ()
) -> None:
    """One fix a minute old per new driver, in one upload: one `driver.online` event each,
    logged once it returns (with --stale-after above a minute, nothing else is logged)."""
    now = time.time_ns()
    msgs = [fix(driver, 52.0, 13.0, at_ns=now - 60 * NANOS + i) for i, driver in enumerate(drivers)]
    summary = await pb_grpc.DriverServiceStub(channel).UploadLocations(
        iter(msgs), metadata=tuple(metadata), timeout=30
    )
    assert summary.persisted_count == len(drivers)


async def replayed_event_ids(target: str) -> list[str]:
    """The ids of the retained event log, oldest first (WatchEvents, replay only)."""
    async with grpc.aio.insecure_channel(target) as channel:
        request = epb.WatchEventsRequest(after_id=0, replay_only=True)
        async with asyncio.timeout(30):
            stream = epb_grpc.EventServiceStub(channel).WatchEvents(request)
            return [str(e.id) async for e in stream]
