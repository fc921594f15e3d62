"""The four DriverService RPCs over a real socket: what a client sees on the wire, every
status code a caller may have to handle, and what the client library makes of it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.client import DriverClient, InvalidArgument, NotFound
from driver_service.domain import Location
from driver_service.server.running import RunningServer
from tests.helpers.grpc_calls import BASE_NS, NANOS, fix, get, ts_ns, upload
from tests.helpers.waiting import eventually

ALL_TIME = (0, 2**63 - 1)
ALLOWED_STATUSES = ("AVAILABLE", "BUSY", "OFFLINE")


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert "Traceback" not in (info.value.details() or "")
    return info.value


# --- GetDriver -------------------------------------------------------------------------------


async def test_get_driver_empty_id_is_invalid_argument(stub: pb_grpc.DriverServiceStub) -> None:
    err = await rpc_error(get(stub, ""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "driver_id is required"


@pytest.mark.parametrize("bad_id", ["has space", "-leading-dash", "émile", "a/b", "x" * 129])
async def test_get_driver_malformed_id_is_invalid_argument(
    stub: pb_grpc.DriverServiceStub, bad_id: str
) -> None:
    err = await rpc_error(get(stub, bad_id))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "driver_id" in (err.details() or "")


async def test_get_driver_unknown_is_not_found_naming_the_id(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    err = await rpc_error(get(stub, "ghost-42"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost-42" in (err.details() or "")


async def test_get_driver_after_upload_reports_newest_fix_to_the_nanosecond(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    newest = BASE_NS + 30 * NANOS + 123_456_789
    summary = await upload(
        stub,
        [
            fix("drv-1", 52.1, 13.1, BASE_NS + 10 * NANOS + 1),
            fix("drv-1", 52.3, 13.3, newest),  # newest in the middle of the stream
            fix("drv-1", 52.2, 13.2, BASE_NS + 20 * NANOS + 999_999_999),
        ],
    )
    assert (summary.received_count, summary.persisted_count) == (3, 3)
    got = await get(stub, "drv-1")
    assert got.driver_id == "drv-1"
    assert got.status == "AVAILABLE"
    assert (got.latitude, got.longitude) == (52.3, 13.3)
    assert ts_ns(got.last_seen_at) == newest


async def test_client_library_get_driver_maps_errors_and_values(
    stub: pb_grpc.DriverServiceStub, client: DriverClient
) -> None:
    with pytest.raises(InvalidArgument) as invalid:
        await client.get_driver("")
    assert invalid.value.details == "driver_id is required"
    with pytest.raises(NotFound) as missing:
        await client.get_driver("nobody")
    assert "nobody" in missing.value.details
    at = BASE_NS + 5 * NANOS + 500_000_000
    await upload(stub, [fix("drv-c", -33.9, 151.2, at)])
    snap = await client.get_driver("drv-c")
    assert (snap.driver_id, snap.status, snap.latitude, snap.longitude) == (
        "drv-c",
        "AVAILABLE",
        -33.9,
        151.2,
    )
    assert snap.last_seen_at.timestamp() == pytest.approx(at / NANOS, abs=1e-6)


# --- UploadLocations -------------------------------------------------------------------------


async def test_upload_counts_every_update_but_persists_only_valid_ones(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    valid = [fix("mix-1", 10.0 + i, 20.0, BASE_NS + i * NANOS) for i in range(5)]
    invalid = [
        fix("mix-1", 90.5, 20.0, BASE_NS + 100 * NANOS),  # latitude out of range
        fix("mix-1", 10.0, -180.5, BASE_NS + 101 * NANOS),  # longitude out of range
        fix("", 10.0, 20.0, BASE_NS + 102 * NANOS),  # no driver id
        fix("mix-1", 10.0, 20.0, BASE_NS + 103 * NANOS, speed=-1.0),
        fix("mix-1", 10.0, 20.0, BASE_NS + 104 * NANOS, heading=361.0),
        fix("mix-1", 10.0, 20.0, 946_684_799 * NANOS),  # before 2000
        fix("mix-1", 10.0, 20.0, time.time_ns() + 3600 * NANOS),  # an hour in the future
    ]
    mixed = [valid[0], invalid[0], valid[1], invalid[1], invalid[2], valid[2]]
    mixed += [invalid[3], valid[3], invalid[4], invalid[5], invalid[6], valid[4]]
    summary = await upload(stub, mixed)
    assert summary.received_count == 12
    assert summary.persisted_count == 5
    got = await get(stub, "mix-1")
    # None of the invalid (later-stamped) fixes became current.
    assert (got.latitude, got.longitude) == (14.0, 20.0)
    assert ts_ns(got.last_seen_at) == BASE_NS + 4 * NANOS


async def test_upload_session_ids_are_unique_per_stream(stub: pb_grpc.DriverServiceStub) -> None:
    first = await upload(stub, [fix("sid-1", 1.0, 1.0, BASE_NS)])
    second = await upload(stub, [fix("sid-1", 1.0, 1.0, BASE_NS + 1)])
    assert first.session_id
    assert second.session_id
    assert first.session_id != second.session_id


async def test_out_of_order_updates_never_move_current_location_backwards(
    stub: pb_grpc.DriverServiceStub,
    sqlite_path: Path,
    stop_server: Callable[[float], Awaitable[None]],
) -> None:
    newest = BASE_NS + 50 * NANOS + 7
    await upload(stub, [fix("ooo-1", 40.0, -3.0, newest)])
    late = await upload(
        stub,
        [
            fix("ooo-1", 41.0, -4.0, BASE_NS + 10 * NANOS),
            fix("ooo-1", 42.0, -5.0, newest - 1),
        ],
    )
    assert (late.received_count, late.persisted_count) == (2, 2)
    got = await get(stub, "ooo-1")
    assert (got.latitude, got.longitude) == (40.0, -3.0)
    assert ts_ns(got.last_seen_at) == newest
    # The late fixes are still history.
    await stop_server(0)
    repo = await SqliteRepository.open(sqlite_path)
    try:
        history = await repo.location_history("ooo-1", *ALL_TIME, 10)
    finally:
        await repo.close()
    assert [h.recorded_at_ns for h in history] == [BASE_NS + 10 * NANOS, newest - 1, newest]


async def test_missing_timestamp_is_accepted_with_server_time(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    before = time.time_ns()
    summary = await upload(stub, [fix("nots-1", 1.5, 2.5, None)])
    after = time.time_ns()
    assert (summary.received_count, summary.persisted_count) == (1, 1)
    got = await get(stub, "nots-1")
    assert (got.latitude, got.longitude) == (1.5, 2.5)
    assert before <= ts_ns(got.last_seen_at) <= after


async def test_empty_upload_stream_gets_zero_counts_and_a_session_id(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    summary = await upload(stub, [])
    assert (summary.received_count, summary.persisted_count) == (0, 0)
    assert summary.session_id


async def test_client_library_upload_reports_the_server_counts(
    stub: pb_grpc.DriverServiceStub, client: DriverClient
) -> None:
    locations = [Location("lib-1", 1.0 + i, 2.0, 3.0, 45.0, BASE_NS + i * NANOS) for i in range(4)]
    locations.append(Location("lib-1", 100.0, 2.0, 3.0, 45.0, BASE_NS + 9 * NANOS))  # invalid
    first = await client.upload(locations)
    assert (first.received_count, first.persisted_count) == (5, 4)

    async def stream() -> AsyncIterator[Location]:
        for i in range(3):
            yield Location("lib-2", 5.0, 6.0 + i, 0.0, 0.0, BASE_NS + i * NANOS)

    second = await client.upload(stream())
    assert (second.received_count, second.persisted_count) == (3, 3)
    assert first.session_id != second.session_id
    assert (await get(stub, "lib-1")).latitude == 4.0
    assert (await get(stub, "lib-2")).longitude == 8.0


async def test_ten_thousand_updates_in_one_stream_are_all_persisted(
    stub: pb_grpc.DriverServiceStub,
    sqlite_path: Path,
    stop_server: Callable[[float], Awaitable[None]],
) -> None:
    drivers, per_driver = 10, 1_000

    def messages() -> Iterable[pb.LocationUpdate]:
        for i in range(per_driver):
            for d in range(drivers):
                yield fix(f"bulk-{d}", (i % 180) - 89.5, d, BASE_NS + i * 1_000_003)

    started = time.perf_counter()
    summary = await stub.UploadLocations(messages(), timeout=60)
    elapsed = time.perf_counter() - started
    print(f"\n10,000-update stream acknowledged in {elapsed * 1000:.0f} ms")
    assert (summary.received_count, summary.persisted_count) == (10_000, 10_000)
    last = per_driver - 1
    for d in range(drivers):
        got = await get(stub, f"bulk-{d}")
        assert (got.latitude, got.longitude) == ((last % 180) - 89.5, d)
        assert ts_ns(got.last_seen_at) == BASE_NS + last * 1_000_003
    await stop_server(0)
    repo = await SqliteRepository.open(sqlite_path)
    try:
        for d in range(drivers):
            history = await repo.location_history(f"bulk-{d}", *ALL_TIME, 2 * per_driver)
            assert len(history) == per_driver, f"bulk-{d}"
    finally:
        await repo.close()


# --- StreamLocation --------------------------------------------------------------------------


async def test_stream_location_empty_id_is_invalid_argument(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    call = stub.StreamLocation(pb.StreamLocationRequest(driver_id=""))
    err = await rpc_error(call.read())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "driver_id is required"


async def test_stream_location_sends_latest_known_location_at_once(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    at = BASE_NS + 77 * NANOS + 42
    await upload(stub, [fix("w-1", 1.0, 1.0, at - NANOS), fix("w-1", 48.85, 2.35, at, 8.5, 270.0)])
    call = stub.StreamLocation(pb.StreamLocationRequest(driver_id="w-1"))
    try:
        first = await asyncio.wait_for(call.read(), 2)
    finally:
        call.cancel()
    assert isinstance(first, pb.LocationUpdate)
    assert first.driver_id == "w-1"
    assert (first.latitude, first.longitude) == (48.85, 2.35)
    assert (first.speed_mps, first.heading_degrees) == (8.5, 270.0)
    assert ts_ns(first.timestamp) == at


async def test_upload_reaches_watcher_with_low_latency(
    stub: pb_grpc.DriverServiceStub, server: RunningServer
) -> None:
    await upload(stub, [fix("lat-1", 0.0, 0.0, BASE_NS)])
    call = stub.StreamLocation(pb.StreamLocationRequest(driver_id="lat-1"))
    arrivals: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    async def read() -> None:
        async for msg in call:
            arrivals.put_nowait((ts_ns(msg.timestamp), time.perf_counter()))

    reader = asyncio.create_task(read())
    try:
        initial, _ = await asyncio.wait_for(arrivals.get(), 2)
        assert initial == BASE_NS
        from_send: list[float] = []
        before_ack = 0
        for i in range(1, 51):
            at = BASE_NS + i * 1_000_000
            sent = time.perf_counter()
            summary = await upload(stub, [fix("lat-1", i / 100, i / 100, at)])
            acked = time.perf_counter()
            assert summary.persisted_count == 1
            got, received = await asyncio.wait_for(arrivals.get(), 5)
            assert got == at
            from_send.append(received - sent)
            before_ack += received < acked
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    def p(samples: list[float], q: int) -> float:
        return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000

    print(
        f"\nupload->watcher latency over {len(from_send)} samples: "
        f"from send p50={p(from_send, 50):.2f} ms p99={p(from_send, 99):.2f} ms, "
        f"{before_ack} of them reached the watcher before the uploader had its ack"
    )
    assert p(from_send, 99) < 1000
    await eventually(lambda: server.tracking.watcher_count == 0, what="unsubscribe")


async def test_watcher_of_unknown_driver_waits_for_its_first_location(
    stub: pb_grpc.DriverServiceStub, server: RunningServer
) -> None:
    tracking = server.tracking
    call = stub.StreamLocation(pb.StreamLocationRequest(driver_id="late-1"))
    arrivals: asyncio.Queue[pb.LocationUpdate] = asyncio.Queue()

    async def read() -> None:
        async for msg in call:
            arrivals.put_nowait(msg)

    reader = asyncio.create_task(read())
    try:
        await eventually(lambda: tracking.watcher_count == 1, what="subscription")
        await asyncio.sleep(0.2)
        assert arrivals.empty(), "an unknown driver's watcher got a location out of nothing"
        assert not reader.done(), "the watcher of an unknown driver was ended"
        at = BASE_NS + 3 * NANOS + 3
        await upload(stub, [fix("late-1", 35.68, 139.69, at)])
        first = await asyncio.wait_for(arrivals.get(), 5)
        assert (first.driver_id, first.latitude, first.longitude) == ("late-1", 35.68, 139.69)
        assert ts_ns(first.timestamp) == at
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_client_cancel_ends_stream_and_removes_subscription(
    stub: pb_grpc.DriverServiceStub, server: RunningServer
) -> None:
    tracking = server.tracking
    await upload(stub, [fix("cx-1", 1.0, 1.0, BASE_NS)])
    call = stub.StreamLocation(pb.StreamLocationRequest(driver_id="cx-1"))
    await asyncio.wait_for(call.read(), 2)
    assert tracking.watcher_count == 1
    assert call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    await eventually(lambda: tracking.watcher_count == 0, what="server-side unsubscribe")
    # The server still serves the driver afterwards.
    assert (await get(stub, "cx-1")).latitude == 1.0


async def test_client_library_watch_stops_cleanly_when_caller_stops(
    stub: pb_grpc.DriverServiceStub, client: DriverClient, server: RunningServer
) -> None:
    tracking = server.tracking
    await upload(stub, [fix("cx-2", 9.0, 9.0, BASE_NS + 11)])
    async with contextlib.aclosing(client.watch("cx-2")) as watch:
        async for loc in watch:
            assert loc == Location("cx-2", 9.0, 9.0, 5.0, 90.0, BASE_NS + 11)
            break
    await eventually(lambda: tracking.watcher_count == 0, what="server-side unsubscribe")


async def test_open_watcher_gets_unavailable_when_server_stops(
    stub: pb_grpc.DriverServiceStub, stop_server: Callable[[float], Awaitable[None]]
) -> None:
    await upload(stub, [fix("stop-1", 1.0, 1.0, BASE_NS)])
    call = stub.StreamLocation(pb.StreamLocationRequest(driver_id="stop-1"))
    await asyncio.wait_for(call.read(), 2)
    started = time.perf_counter()
    await stop_server(5)
    stop_took = time.perf_counter() - started
    err = await rpc_error(call.read())
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # Live streams are ended by the server, not waited out for the whole grace period.
    assert stop_took < 4, f"stop took {stop_took:.1f} s with an open watcher"


# --- DriverSession ---------------------------------------------------------------------------


async def test_session_heartbeat_gets_pong_with_server_time(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    call = stub.DriverSession()
    await call.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
    reply = await asyncio.wait_for(call.read(), 5)
    assert reply.WhichOneof("command") == "pong"
    assert abs(reply.pong.server_ts_ms - time.time_ns() // 1_000_000) < 5_000
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def _status_then_barrier(
    call: grpc.aio.StreamStreamCall, driver_id: str, status: str
) -> None:  # type: ignore[type-arg]
    await call.write(
        pb.DriverEvent(status_change=pb.DriverStatusChange(driver_id=driver_id, new_status=status))
    )
    await call.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing()))
    reply = await asyncio.wait_for(call.read(), 5)
    assert reply.WhichOneof("command") == "pong"


async def test_session_status_change_is_visible_to_get_driver_immediately(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    at = BASE_NS + 123
    await upload(stub, [fix("st-1", 5.0, 6.0, at)])
    call = stub.DriverSession()
    try:
        await _status_then_barrier(call, "st-1", "BUSY")
        got = await get(stub, "st-1")
        assert got.status == "BUSY"
        assert (got.latitude, got.longitude) == (5.0, 6.0)  # status keeps the location
        assert ts_ns(got.last_seen_at) > at  # the status change is the newest event
        await _status_then_barrier(call, "st-new", "OFFLINE")  # a driver first seen by status
        assert (await get(stub, "st-new")).status == "OFFLINE"
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    finally:
        call.cancel()


@pytest.mark.parametrize("bad_status", ["busy", "", "ON_A_BREAK"])
async def test_session_invalid_status_ends_stream_naming_allowed_values(
    stub: pb_grpc.DriverServiceStub, bad_status: str
) -> None:
    await upload(stub, [fix("st-2", 5.0, 6.0, BASE_NS)])
    call = stub.DriverSession()
    await call.write(
        pb.DriverEvent(status_change=pb.DriverStatusChange(driver_id="st-2", new_status=bad_status))
    )
    err = await rpc_error(call.read())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    for allowed in ALLOWED_STATUSES:
        assert allowed in details
    assert (await get(stub, "st-2")).status == "AVAILABLE"


async def test_session_event_without_oneof_is_invalid_argument(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    call = stub.DriverSession()
    await call.write(pb.DriverEvent())
    err = await rpc_error(call.read())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    for field in ("location", "status_change", "heartbeat"):
        assert field in details


async def test_session_locations_are_persisted_and_reach_a_watcher(
    stub: pb_grpc.DriverServiceStub, server: RunningServer
) -> None:
    watch = stub.StreamLocation(pb.StreamLocationRequest(driver_id="ses-1"))
    seen: asyncio.Queue[pb.LocationUpdate] = asyncio.Queue()

    async def read() -> None:
        async for msg in watch:
            seen.put_nowait(msg)

    reader = asyncio.create_task(read())
    session = stub.DriverSession()
    try:
        await eventually(lambda: server.tracking.watcher_count == 1, what="subscription")
        newest = BASE_NS + 3 * NANOS + 333
        for i, at in enumerate([BASE_NS + NANOS, BASE_NS + 2 * NANOS, newest]):
            await session.write(pb.DriverEvent(location=fix("ses-1", 10.0 + i, 20.0 + i, at)))
        while True:
            msg = await asyncio.wait_for(seen.get(), 5)
            if ts_ns(msg.timestamp) == newest:
                break
        assert (msg.latitude, msg.longitude) == (12.0, 22.0)
        await session.done_writing()
        assert await session.read() == grpc.aio.EOF
        assert await session.code() == grpc.StatusCode.OK
    finally:
        session.cancel()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    got = await get(stub, "ses-1")
    assert (got.latitude, got.longitude) == (12.0, 22.0)
    assert ts_ns(got.last_seen_at) == newest


async def test_client_library_session(client: DriverClient) -> None:
    newest = BASE_NS + 9 * NANOS + 9
    async with await client.session() as session:
        server_ms, rtt = await session.heartbeat()
        assert abs(server_ms - time.time_ns() // 1_000_000) < 5_000
        assert 0 <= rtt < 5
        await session.send_location(Location("lib-s", 1.0, 2.0, 3.0, 4.0, BASE_NS))
        await session.send_location(Location("lib-s", 1.5, 2.5, 3.0, 4.0, newest))
        await session.change_status("lib-s", "BUSY")
        await session.heartbeat()
        assert (await client.get_driver("lib-s")).status == "BUSY"
    snap = await client.get_driver("lib-s")
    assert (snap.status, snap.latitude, snap.longitude) == ("BUSY", 1.5, 2.5)

    with pytest.raises(InvalidArgument) as info:
        async with await client.session() as bad:
            await bad.change_status("lib-s", "busy")
    assert "AVAILABLE" in info.value.details


# --- Hostile input ---------------------------------------------------------------------------

ONE_MB_ID = "a" * (1 << 20)


async def test_one_megabyte_driver_id_is_rejected_and_server_keeps_serving(
    stub: pb_grpc.DriverServiceStub,
) -> None:
    ok_codes = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
    err = await rpc_error(get(stub, ONE_MB_ID))
    assert err.code() in ok_codes
    assert len(err.details() or "") < 1000, "the error echoes the huge id back"
    watch = stub.StreamLocation(pb.StreamLocationRequest(driver_id=ONE_MB_ID))
    err = await rpc_error(watch.read())
    assert err.code() in ok_codes
    assert len(err.details() or "") < 1000
    # An upload carrying it: rejected as a whole, or counted as invalid and not stored.
    call = stub.UploadLocations(iter([fix(ONE_MB_ID, 1.0, 1.0, BASE_NS)]), timeout=30)
    code = await call.code()
    if code == grpc.StatusCode.OK:
        summary = await call
        assert (summary.received_count, summary.persisted_count) == (1, 0)
    else:
        assert code in ok_codes
        assert "Traceback" not in (await call.details() or "")
    # Beyond the message-size limit: RESOURCE_EXHAUSTED, not a crash.
    err = await rpc_error(get(stub, "b" * (5 << 20)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await upload(stub, [fix("after-1", 1.0, 1.0, BASE_NS)])
    assert (await get(stub, "after-1")).latitude == 1.0


@pytest.mark.parametrize(
    ("lat", "lon"), [(math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (1.0, -math.inf)]
)
async def test_non_finite_coordinates_are_counted_invalid(
    stub: pb_grpc.DriverServiceStub, lat: float, lon: float
) -> None:
    summary = await upload(stub, [fix("nan-1", lat, lon, BASE_NS)])
    assert (summary.received_count, summary.persisted_count) == (1, 0)
    err = await rpc_error(get(stub, "nan-1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_undecodable_request_gets_a_status_without_internals(
    channel: grpc.aio.Channel, stub: pb_grpc.DriverServiceStub
) -> None:
    raw = channel.unary_unary("/driver.v1.DriverService/GetDriver")
    err = await rpc_error(raw(b"\xff\xff\xff\xff garbage", timeout=5))
    # Stock grpcio would answer UNKNOWN "Unexpected <class '...DecodeError'>: ...".
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    assert "not a valid protobuf message" in details
    assert "Traceback" not in details
    assert "DecodeError" not in details
    assert 'File "' not in details
    raw_upload = channel.stream_unary("/driver.v1.DriverService/UploadLocations")
    valid = fix("garbled-1", 1.0, 1.0, BASE_NS).SerializeToString()
    err = await rpc_error(raw_upload(iter([valid, b"\xff\xff garbage"]), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeError" not in (err.details() or "")
    unknown = channel.unary_unary("/driver.v1.DriverService/NoSuchMethod")
    err = await rpc_error(unknown(b"", timeout=5))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    await upload(stub, [fix("after-2", 1.0, 1.0, BASE_NS)])
    assert (await get(stub, "after-2")).latitude == 1.0


# --- Health ----------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "driver.v1.DriverService"])
async def test_health_reports_serving(channel: grpc.aio.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_unknown_service_is_not_found(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    err = await rpc_error(
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
