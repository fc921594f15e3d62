"""DriverSession over a real server: an idle session still gets pushed commands and is
ended by shutdown, locations and heartbeats interleave in order, and a closed session is
forgotten (listeners told, nothing left per session)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.server.running import RunningServer
from tests.helpers.waiting import eventually


def heartbeat() -> pb.DriverEvent:
    return pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1))


def location(driver_id: str) -> pb.DriverEvent:
    return pb.DriverEvent(
        location=pb.LocationUpdate(driver_id=driver_id, latitude=52.5, longitude=13.4)
    )


async def pong(call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
    reply = await asyncio.wait_for(call.read(), 5)
    assert reply.WhichOneof("command") == "pong"


async def test_an_idle_bound_session_gets_a_pushed_command_at_once(
    stub: pb_grpc.DriverServiceStub, server: RunningServer
) -> None:
    tracking = server.tracking
    call = stub.DriverSession()
    try:
        await call.write(location("idle-1"))
        await call.write(heartbeat())
        await pong(call)  # the location was handled before the heartbeat: bound
        assert tracking.has_session("idle-1")
        await asyncio.sleep(0.05)  # the session now waits for its client
        command = pb.ServerCommand(pong=pb.PingResponse(server_ts_ms=42))
        assert tracking.push_command("idle-1", command)
        reply = await asyncio.wait_for(call.read(), 2)
        assert reply.pong.server_ts_ms == 42
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    finally:
        call.cancel()


async def test_many_events_in_a_burst_are_all_handled_in_order(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    """More events than the inbox buffers (64): the reader waits for room, nothing is lost."""
    call = stub.DriverSession()
    try:
        for n in range(200):
            await call.write(location("burst-1") if n % 2 else heartbeat())
        await call.done_writing()
        pongs = 0
        while (reply := await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
            assert reply.WhichOneof("command") == "pong"
            pongs += 1
        assert pongs == 100
        assert await call.code() == grpc.StatusCode.OK
    finally:
        call.cancel()


async def test_closed_sessions_are_forgotten_and_close_listeners_are_told(
    stub: pb_grpc.DriverServiceStub, server: RunningServer
) -> None:
    tracking = server.tracking
    closed: list[str] = []
    tracking.session_close_listeners.append(closed.append)
    before = tracking.session_count
    calls = [stub.DriverSession() for _ in range(3)]
    for n, call in enumerate(calls):
        await call.write(location(f"gone-{n}"))
        await call.write(heartbeat())
        await pong(call)
    assert tracking.session_count == before + 3
    calls[0].cancel()  # the client goes away
    await calls[1].done_writing()  # the client ends the stream
    assert await calls[1].read() == grpc.aio.EOF
    await calls[2].write(pb.DriverEvent())  # the server ends it: INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await calls[2].read()
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await eventually(lambda: tracking.session_count == before, what="sessions closed")
    assert sorted(closed) == ["gone-0", "gone-1", "gone-2"]
    assert not any(tracking.has_session(f"gone-{n}") for n in range(3))


async def test_idle_sessions_end_with_unavailable_when_the_server_stops(
    stub: pb_grpc.DriverServiceStub,
    server: RunningServer,
    stop_server: Callable[[float], Awaitable[None]],
) -> None:
    calls = [stub.DriverSession() for _ in range(5)]
    for call in calls:
        await call.write(heartbeat())
        await pong(call)
    await eventually(lambda: server.tracking.session_count == 5, what="sessions open")
    await stop_server(5)
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), 2)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
