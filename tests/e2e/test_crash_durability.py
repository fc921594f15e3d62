"""SIGKILL in the middle of concurrent uploads: everything acknowledged survives the crash.

A summary from UploadLocations is a promise that its updates are durably stored; a status
change is stored before any later event of the same session is answered. A crash (no
shutdown code runs) must not break either promise.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.server.config import SQLITE_FILE_NAME
from tests.helpers.server_process import Launcher

pytestmark = pytest.mark.e2e

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 7200) * NANOS
STREAMS = 20
PER_STREAM = 2_000
CHUNK = 200
KILL_AFTER_ACKS = 6
#: Streams from this one on hold their last chunk until the kill: however fast or slow the
#: server is, they are mid-send when it dies.
HELD_FROM = 10
ALL_TIME = (0, 2**63 - 1)


def driver_of(stream: int) -> str:
    return f"crash-{stream:02d}"


def at_ns(stream: int, seq: int) -> int:
    return BASE_NS + seq * 1_000_003 + stream


def coords(stream: int, seq: int) -> tuple[float, float]:
    return -80.0 + (seq % 160) + stream / 1000, -170.0 + (seq % 340) + stream / 1000


def stream_messages(stream: int) -> list[pb.LocationUpdate]:
    messages = []
    for seq in range(PER_STREAM):
        lat, lon = coords(stream, seq)
        seconds, nanos = divmod(at_ns(stream, seq), NANOS)
        messages.append(
            pb.LocationUpdate(
                driver_id=driver_of(stream),
                latitude=lat,
                longitude=lon,
                speed_mps=10.0,
                heading_degrees=180.0,
                timestamp=Timestamp(seconds=seconds, nanos=nanos),
            )
        )
    return messages


async def test_acknowledged_uploads_survive_sigkill(launcher: Launcher, data_dir: Path) -> None:
    server = launcher.start(data_dir)
    payloads = {i: stream_messages(i) for i in range(STREAMS)}
    acked: dict[int, pb.UploadSummary] = {}
    failed: dict[int, tuple[grpc.StatusCode, str]] = {}
    read_back: dict[int, pb.GetDriverResponse] = {}
    killed = asyncio.Event()

    async def paced(stream: int) -> AsyncIterator[pb.LocationUpdate]:
        """Send in chunks, later streams slower, so streams finish one after another and
        most are mid-send when the first few are acknowledged; held streams wait for the
        kill before their last chunk."""
        messages = payloads[stream]
        for start in range(0, PER_STREAM, CHUNK):
            if stream >= HELD_FROM and start + CHUNK >= PER_STREAM:
                await asyncio.wait_for(killed.wait(), 60)
            for msg in messages[start : start + CHUNK]:
                yield msg
            await asyncio.sleep(0.005 * (1 + stream))

    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.DriverServiceStub(channel)

        async def run(stream: int) -> None:
            try:
                summary = await stub.UploadLocations(paced(stream), timeout=60)
            except grpc.aio.AioRpcError as err:
                failed[stream] = (err.code(), err.details() or "")
                return
            acked[stream] = summary
            if server.proc.poll() is not None:
                return
            # Read-after-ack: an acknowledged stream's newest fix is already current.
            try:
                got = await stub.GetDriver(
                    pb.GetDriverRequest(driver_id=driver_of(stream)), timeout=5
                )
            except grpc.aio.AioRpcError:
                if server.proc.poll() is None:
                    raise
                return
            read_back[stream] = got
            if len(read_back) == KILL_AFTER_ACKS:
                server.kill()  # in the middle: the other streams are mid-send right now
                killed.set()

        await asyncio.gather(*(run(i) for i in range(STREAMS)))

    assert server.proc.returncode == -9, "the server was not killed mid-run"
    assert len(acked) >= KILL_AFTER_ACKS
    assert failed, "every stream finished before the kill: the crash tested nothing"
    assert set(acked) | set(failed) == set(range(STREAMS))
    # A connection cut mid-stream reaches grpcio's client as UNAVAILABLE, or sometimes as
    # INTERNAL "Internal error from Core" when a write of the stream is pending.
    assert {code for code, _ in failed.values()} <= {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
    }, failed
    print({f"{code.name}: {details}" for code, details in failed.values()})
    for summary in acked.values():
        assert (summary.received_count, summary.persisted_count) == (PER_STREAM, PER_STREAM)
    last = PER_STREAM - 1
    for stream, got in read_back.items():
        assert (got.latitude, got.longitude) == coords(stream, last), driver_of(stream)
    print(f"\nacknowledged before SIGKILL: {len(acked)} streams; cut off: {len(failed)}")

    restarted = launcher.start(data_dir)
    async with grpc.aio.insecure_channel(restarted.target) as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        for stream in acked:
            got = await stub.GetDriver(pb.GetDriverRequest(driver_id=driver_of(stream)), timeout=5)
            assert (got.latitude, got.longitude) == coords(stream, last), driver_of(stream)
            assert got.last_seen_at.seconds * NANOS + got.last_seen_at.nanos == at_ns(stream, last)

    restarted.signal(signal.SIGTERM)
    assert restarted.wait(15) == 0, restarted.stderr

    partial = 0
    repo = await SqliteRepository.open(data_dir / SQLITE_FILE_NAME)
    try:
        for stream in range(STREAMS):
            history = await repo.location_history(driver_of(stream), *ALL_TIME, 2 * PER_STREAM)
            expected = [at_ns(stream, seq) for seq in range(PER_STREAM)]
            if stream in acked:
                assert [h.recorded_at_ns for h in history] == expected, driver_of(stream)
            else:
                # A stream cut off mid-way may have some commits, never anything else.
                assert {h.recorded_at_ns for h in history} <= set(expected)
                partial += len(history) > 0
            # Current state and history are committed together: they agree after the crash.
            driver = await repo.get_driver(driver_of(stream))
            if history:
                assert driver is not None
                assert driver.location is not None
                assert driver.location.recorded_at_ns == history[-1].recorded_at_ns
            else:
                assert driver is None
    finally:
        await repo.close()
    print(f"cut-off streams with some updates committed before the kill: {partial}")
    assert partial, "no stream was cut off mid-send"


async def test_status_change_before_heartbeat_survives_sigkill(
    launcher: Launcher, data_dir: Path
) -> None:
    server = launcher.start(data_dir)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        seconds, nanos = divmod(BASE_NS + 5, NANOS)
        await stub.UploadLocations(
            iter(
                [
                    pb.LocationUpdate(
                        driver_id="crash-status",
                        latitude=1.0,
                        longitude=2.0,
                        timestamp=Timestamp(seconds=seconds, nanos=nanos),
                    )
                ]
            ),
            timeout=10,
        )
        session = stub.DriverSession()
        await session.write(
            pb.DriverEvent(
                status_change=pb.DriverStatusChange(driver_id="crash-status", new_status="BUSY")
            )
        )
        await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
        pong = await asyncio.wait_for(session.read(), 5)
        assert pong.WhichOneof("command") == "pong"
        server.kill()
        session.cancel()

    restarted = launcher.start(data_dir)
    async with grpc.aio.insecure_channel(restarted.target) as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        got = await stub.GetDriver(pb.GetDriverRequest(driver_id="crash-status"), timeout=5)
    assert got.status == "BUSY"
    assert (got.latitude, got.longitude) == (1.0, 2.0)
