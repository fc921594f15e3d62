"""DriverService messages and calls on the raw generated stub, as a client sees the wire:
fixes stamped to the nanosecond, an upload of a list of them, a GetDriver."""

from __future__ import annotations

import time
from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc

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
