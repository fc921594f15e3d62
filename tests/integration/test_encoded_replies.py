"""GetDriver's reply is sent as bytes encoded once per state of the driver: on a production-built
server (SQLite, where the reply is read from memory without a wait; PostgreSQL + Redis), the
bytes on the wire are protobuf's own encoding of the driver's current state, and after every
change (a newer location, a status change, an erasure, the driver coming back) the next reply
is the new state's, never a kept one."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc
from driver_service.server.composition import build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import start_server
from tests.helpers.stores import STORE_KINDS, store_settings

GET_DRIVER = "/driver.v1.DriverService/GetDriver"
DRIVER = "enc-1"
S = 10**9


@pytest.fixture(params=STORE_KINDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> ServerSettings:
    return store_settings(request, tmp_path)


@pytest.fixture
async def channel(settings: ServerSettings) -> AsyncIterator[grpc.aio.Channel]:
    running = await start_server(settings, await build_services(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield channel
    finally:
        await channel.close()
        await running.stop(0)


def update(latitude: float, at_ns: int) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(driver_id=DRIVER, latitude=latitude, longitude=13.4, speed_mps=3.0)
    msg.timestamp.FromNanoseconds(at_ns)
    return msg


def expected(status: str, latitude: float, at_ns: int) -> bytes:
    """What protobuf itself encodes for the driver in this state."""
    reply = pb.GetDriverResponse(driver_id=DRIVER, status=status, latitude=latitude, longitude=13.4)
    reply.last_seen_at.FromNanoseconds(at_ns)
    return reply.SerializeToString()


async def raw_reply(channel: grpc.aio.Channel) -> bytes:
    """GetDriver's reply as the bytes that came over the wire (no deserializer)."""
    call = channel.unary_unary(
        GET_DRIVER,
        request_serializer=pb.GetDriverRequest.SerializeToString,
        response_deserializer=None,
    )
    reply: bytes = await call(pb.GetDriverRequest(driver_id=DRIVER), timeout=5)
    return reply


async def change_status(channel: grpc.aio.Channel, status: str) -> None:
    """A status change through a DriverSession, answered (a heartbeat after it) once stored."""
    stub = pb_grpc.DriverServiceStub(channel)
    events = [
        pb.DriverEvent(status_change=pb.DriverStatusChange(driver_id=DRIVER, new_status=status)),
        pb.DriverEvent(heartbeat=pb.HeartbeatPing()),
    ]
    call = stub.DriverSession(iter(events), timeout=5)
    async for command in call:
        if command.HasField("pong"):
            break
    call.cancel()


async def test_reply_bytes_follow_every_change_of_the_driver(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.DriverServiceStub(channel)
    t0 = time.time_ns() - 60 * S
    await stub.UploadLocations(iter([update(52.5, t0)]), timeout=5)
    first = expected("AVAILABLE", 52.5, t0)
    assert await raw_reply(channel) == first
    assert await raw_reply(channel) == first  # served again from what was kept
    assert await stub.GetDriver(pb.GetDriverRequest(driver_id=DRIVER), timeout=5) == (
        pb.GetDriverResponse.FromString(first)
    )

    await stub.UploadLocations(iter([update(52.6, t0 + S)]), timeout=5)
    assert await raw_reply(channel) == expected("AVAILABLE", 52.6, t0 + S)
    # An older fix goes to history only: the reply stays that of the newest one.
    await stub.UploadLocations(iter([update(40.0, t0 - S)]), timeout=5)
    assert await raw_reply(channel) == expected("AVAILABLE", 52.6, t0 + S)

    await change_status(channel, "BUSY")
    busy = pb.GetDriverResponse.FromString(await raw_reply(channel))
    assert (busy.status, busy.latitude) == ("BUSY", 52.6)
    assert await raw_reply(channel) == busy.SerializeToString()

    history = hpb_grpc.HistoryServiceStub(channel)
    await history.ForgetDriver(hpb.ForgetDriverRequest(driver_id=DRIVER), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_reply(channel)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND

    # Back after the erasure: its new state, nothing of the one before.
    await stub.UploadLocations(iter([update(10.0, t0 + 2 * S)]), timeout=5)
    assert await raw_reply(channel) == expected("AVAILABLE", 10.0, t0 + 2 * S)


async def test_unknown_and_invalid_ids_keep_their_errors(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.DriverServiceStub(channel)
    for driver_id, code in (
        ("nobody", grpc.StatusCode.NOT_FOUND),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetDriver(pb.GetDriverRequest(driver_id=driver_id), timeout=5)
        assert info.value.code() is code
