"""SIGTERM as Kubernetes sends it, with work in flight: health turns NOT_SERVING first (seen on
the admin port), live watchers get UNAVAILABLE, an upload in progress finishes and is stored,
/metrics has counted the calls, and the process exits 0 within the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.client import DriverClient
from driver_service.wire import ns_to_timestamp
from tests.helpers.ports import free_port
from tests.helpers.server_process import Launcher

pytestmark = pytest.mark.e2e

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 600) * NANOS
GRACE_S = 5


def fix(i: int) -> pb.LocationUpdate:
    return pb.LocationUpdate(
        driver_id="drain-1", latitude=10.0 + i / 1000, longitude=20.0, speed_mps=3.0,
        heading_degrees=45.0, timestamp=ns_to_timestamp(BASE_NS + i * NANOS),
    )  # fmt: skip


def metrics_text(admin: str) -> str:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def ending_code(call: grpc.aio.UnaryStreamCall[Any, Any]) -> grpc.StatusCode:
    """Read a server stream to its end (its queued messages first) and return its status."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await call.read() is not grpc.aio.EOF:
            pass
    return await call.code()


async def test_sigterm_drains_and_keeps_everything(launcher: Launcher, data_dir: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    server = launcher.start(
        data_dir, "--admin-listen", admin, "--shutdown-grace", str(GRACE_S), "--log-format", "json"
    )
    async with (
        grpc.aio.insecure_channel(server.target) as channel,
        grpc.aio.insecure_channel(admin) as admin_channel,
    ):
        stub = pb_grpc.DriverServiceStub(channel)
        health = health_pb2_grpc.HealthStub(admin_channel)
        check = health_pb2.HealthCheckRequest(service="driver.v1.DriverService")
        assert (
            await health.Check(check, timeout=5)
        ).status == health_pb2.HealthCheckResponse.SERVING
        health_events: list[tuple[float, int]] = []

        async def watch_health() -> None:
            async for reply in health.Watch(check):
                health_events.append((time.monotonic(), reply.status))  # noqa: PERF401 - timed

        health_task = asyncio.create_task(watch_health())
        # A watcher that is open when the signal comes.
        watcher = stub.StreamLocation(pb.StreamLocationRequest(driver_id="drain-1"))
        # An upload that is half sent when the signal comes, and finishes during the drain.
        signalled = asyncio.Event()

        async def updates() -> AsyncIterator[pb.LocationUpdate]:
            for i in range(50):
                yield fix(i)
            await signalled.wait()
            await asyncio.sleep(0.5)  # sent well after SIGTERM, within the grace period
            for i in range(50, 100):
                yield fix(i)

        upload = stub.UploadLocations(updates(), timeout=30)
        first = await asyncio.wait_for(watcher.read(), 5)
        assert first.driver_id == "drain-1"
        await asyncio.sleep(0.2)
        before = metrics_text(admin)
        assert 'grpc_method="StreamLocation"' in before
        assert "grpc_server_started_total" in before

        sigterm_at = time.monotonic()
        server.signal(signal.SIGTERM)
        signalled.set()
        assert await asyncio.wait_for(ending_code(watcher), 5) == grpc.StatusCode.UNAVAILABLE
        watcher_ended_at = time.monotonic()
        # During the drain the admin port still answers, and says NOT_SERVING.
        reply = await health.Check(check, timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        summary = await upload
        assert (summary.received_count, summary.persisted_count) == (100, 100)
        code = await asyncio.to_thread(server.wait, GRACE_S + 5)
        assert code == 0, server.stderr
        assert time.monotonic() - sigterm_at < GRACE_S + 2
        health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await health_task
    not_serving = [
        t for t, status in health_events if status != health_pb2.HealthCheckResponse.SERVING
    ]
    assert not_serving, health_events
    # The server flips health before it ends streams; the two travel on different
    # connections, so their arrival order here may differ by a scheduling slice.
    assert not_serving[0] <= watcher_ended_at + 0.05
    # Everything acknowledged is there after a restart.
    restarted = launcher.start(data_dir)
    async with DriverClient(restarted.target) as client:
        driver = await client.get_driver("drain-1")
    assert driver.latitude == pytest.approx(10.0 + 99 / 1000)
