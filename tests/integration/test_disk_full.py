"""A full disk under the SQLite store: uploads are refused with a resend hint and nothing
acknowledged is lost, health says NOT_SERVING while commits fail, the log gets a line per
interval rather than a traceback per commit, and everything recovers once space is freed.

The disk is real: a small tmpfs mounted for the test (the tests run as root here).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.server.composition import build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 3600) * NANOS
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB filesystem of its own, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)
    return filler


@pytest.fixture
async def disk_server(small_disk: Path) -> AsyncIterator[RunningServer]:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        admin_listen="",
        data_dir=small_disk,
        insecure=True,
        rate_limit=0,  # one driver sends thousands of fixes a second here
    )
    running = await start_server(settings, await build_services(settings))
    try:
        yield running
    finally:
        await running.stop(0)


def _fixes(driver_id: str, first: int, count: int) -> list[pb.LocationUpdate]:
    fixes = []
    for i in range(first, first + count):
        msg = pb.LocationUpdate(
            driver_id=driver_id, latitude=10 + i * 1e-6, longitude=20.0, speed_mps=1.0
        )
        msg.timestamp.seconds, msg.timestamp.nanos = divmod(BASE_NS + i * 1000, NANOS)
        fixes.append(msg)
    return fixes


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="driver.v1.DriverService"), timeout=1
    )
    return int(reply.status)


async def _wait_for_health(channel: grpc.aio.Channel, status: int, within_s: float) -> float:
    started = time.monotonic()
    while (await _health(channel)) != status:
        if time.monotonic() - started > within_s:
            pytest.fail(f"health did not become {status} within {within_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_full_disk_refuses_uploads_turns_health_and_recovers(
    disk_server: RunningServer, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acknowledged: set[int] = set()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{disk_server.port}") as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        summary = await stub.UploadLocations(iter(_fixes("d1", 0, 100)), timeout=5)
        assert summary.persisted_count == 100
        acknowledged.update(range(100))
        assert await _health(channel) == SERVING

        filler = fill(small_disk)
        refusals: list[grpc.aio.AioRpcError] = []
        with caplog.at_level(logging.INFO):
            for batch in range(12):
                first = 100 + batch * 2000
                try:
                    summary = await stub.UploadLocations(iter(_fixes("d1", first, 2000)), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    refusals.append(exc)
                else:
                    acknowledged.update(range(first, first + summary.persisted_count))
            assert len(refusals) >= 8, "the disk is full: uploads must be refused"
            assert {e.code() for e in refusals} == {grpc.StatusCode.UNAVAILABLE}
            assert all("resend" in (e.details() or "") for e in refusals)
            await _wait_for_health(channel, NOT_SERVING, within_s=2.5)
        commit_errors = [
            r
            for r in caplog.records
            if r.name == "driver_service.app.writer" and r.levelno >= logging.ERROR
        ]
        # Thousands of failed commits: one line with the traceback, then one per interval.
        assert 1 <= len(commit_errors) <= 2, [r.getMessage() for r in commit_errors]
        assert sum(r.exc_info is not None for r in caplog.records) == 1

        filler.unlink()
        summary = await stub.UploadLocations(iter(_fixes("d1", 900_000, 50)), timeout=5)
        assert summary.persisted_count == 50
        acknowledged.update(range(900_000, 900_050))
        await _wait_for_health(channel, SERVING, within_s=2.5)
        assert any(
            "committing location updates succeeds again" in r.getMessage() for r in caplog.records
        )

    await disk_server.stop(0)
    db = ServerSettings(data_dir=small_disk).sqlite_path()
    with contextlib.closing(sqlite3.connect(db)) as con:
        stored = {
            (at - BASE_NS) // 1000
            for (at,) in con.execute(
                "SELECT recorded_at_ns FROM location_history WHERE driver_id = 'd1'"
            )
        }
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged updates lost"


async def test_with_no_traffic_health_recovers_by_itself_once_space_is_freed(
    disk_server: RunningServer, small_disk: Path
) -> None:
    """A replica taken out of rotation gets no uploads that could prove the store works
    again; the health probe's own write must bring it back."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{disk_server.port}") as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        filler = fill(small_disk)
        for batch in range(10):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.UploadLocations(iter(_fixes("d2", batch * 2000, 2000)), timeout=5)
        await _wait_for_health(channel, NOT_SERVING, within_s=2.5)
        filler.unlink()
        os.sync()
        await _wait_for_health(channel, SERVING, within_s=4.0)
