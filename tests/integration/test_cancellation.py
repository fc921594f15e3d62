"""A caller that hangs up hurts only its own call: cancellation, deadlines and disconnects at
every step of the streaming RPCs, then a normal upload must still be acknowledged at once.

These reproduce the defect where a cancelled upload cancelled the commit future that every
stream of the same group commit shared, which ended the single writer and stopped ingestion
for every client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.server.running import RunningServer
from tests.helpers.waiting import eventually

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 600) * NANOS


def _fix(driver_id: str, i: int) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(
        driver_id=driver_id, latitude=52.0 + i * 1e-5, longitude=13.0, speed_mps=3.0
    )
    seconds, nanos = divmod(BASE_NS + i * 1_000_000, NANOS)
    msg.timestamp.seconds, msg.timestamp.nanos = seconds, nanos
    return msg


async def _updates(driver_id: str, count: int) -> AsyncIterator[pb.LocationUpdate]:
    for i in range(count):
        yield _fix(driver_id, i)


async def _healthy_upload(stub: pb_grpc.DriverServiceStub, driver_id: str) -> pb.UploadSummary:
    """A normal upload that must be acknowledged: with ingestion stopped it never is, so the
    deadline only has to outlast a loaded machine (it was one second)."""
    return await stub.UploadLocations(_updates(driver_id, 5), timeout=5.0)


async def _upload_then_cancel(stub: pb_grpc.DriverServiceStub, n: int, delay_s: float) -> None:
    """Send 50 updates, half-close, cancel the call while it waits for the commit."""
    call = stub.UploadLocations()
    for i in range(50):
        await call.write(_fix(f"cancel-{n}", i))
    await call.done_writing()
    await asyncio.sleep(delay_s)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await call


async def test_uploads_cancelled_after_half_close_do_not_stop_ingestion(
    server: RunningServer, stub: pb_grpc.DriverServiceStub
) -> None:
    for round_ in range(5):
        await asyncio.gather(
            *(_upload_then_cancel(stub, round_ * 100 + n, (n % 4) / 1000) for n in range(20))
        )
    summary = await _healthy_upload(stub, "after-cancel")
    assert summary.persisted_count == 5
    assert server.tracking.writer.running


async def test_upload_cancelled_mid_stream_does_not_stop_ingestion(
    server: RunningServer, stub: pb_grpc.DriverServiceStub
) -> None:
    for n in range(20):
        call = stub.UploadLocations()
        for i in range(10):
            await call.write(_fix(f"mid-{n}", i))
        await asyncio.sleep(0.001 * (n % 3))
        call.cancel()
    summary = await _healthy_upload(stub, "after-mid-stream")
    assert summary.persisted_count == 5


async def test_uploads_running_into_deadlines_do_not_stop_ingestion(
    server: RunningServer, stub: pb_grpc.DriverServiceStub
) -> None:
    async def short_deadline(n: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.UploadLocations(_updates(f"deadline-{n}", 200), timeout=0.002 * (n % 5 + 1))

    await asyncio.gather(*(short_deadline(n) for n in range(30)))
    summary = await _healthy_upload(stub, "after-deadline")
    assert summary.persisted_count == 5


async def test_session_cancelled_after_a_location_does_not_stop_ingestion(
    server: RunningServer, stub: pb_grpc.DriverServiceStub
) -> None:
    for n in range(20):
        call = stub.DriverSession()
        await call.write(pb.DriverEvent(location=_fix(f"sess-{n}", 0)))
        if n % 2:
            await call.done_writing()
        await asyncio.sleep(0.001 * (n % 3))
        call.cancel()
    summary = await _healthy_upload(stub, "after-session")
    assert summary.persisted_count == 5
    # Every cancelled session ends on the server too (none left open, nothing left to run
    # after the test's event loop closes).
    await eventually(lambda: server.tracking.session_count == 0, 5, "sessions to end")


@pytest.mark.parametrize("cancel_after", [0, 1, 5])
async def test_updates_of_cancelled_uploads_that_were_committed_stay_committed(
    server: RunningServer, stub: pb_grpc.DriverServiceStub, cancel_after: int
) -> None:
    """Cancelling does not undo or corrupt what other streams in the same commit stored."""
    keep = stub.UploadLocations(_updates("keeper", 50))
    await asyncio.sleep(cancel_after / 1000)
    await _upload_then_cancel(stub, 999, cancel_after / 1000)
    summary = await keep
    assert summary.persisted_count == 50
    driver = await stub.GetDriver(pb.GetDriverRequest(driver_id="keeper"), timeout=1.0)
    assert driver.latitude == pytest.approx(52.0 + 49 * 1e-5)
