"""The admin port on a real socket: gRPC health from the shared servicer, HTTP GET /metrics,
404 elsewhere, and garbage that closes only its own connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.server.admin import AdminServer, start_admin

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "driver.v1.DriverService"


@dataclass
class Env:
    admin: AdminServer
    health: health_aio.HealthServicer
    metrics: ServiceMetrics
    channel: grpc.aio.Channel

    @property
    def stub(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    health = health_aio.HealthServicer()
    await health.set(SERVICE, SERVING)
    metrics = ServiceMetrics()
    admin = await start_admin("127.0.0.1:0", health, metrics)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin.port}") as channel:
            yield Env(admin, health, metrics, channel)
    finally:
        await admin.stop()


async def http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_health_reflects_set_calls_on_the_shared_servicer(env: Env) -> None:
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    assert (await env.stub.Check(request)).status == SERVING
    await env.health.set(SERVICE, NOT_SERVING)
    assert (await env.stub.Check(request)).status == NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.stub.Check(health_pb2.HealthCheckRequest(service="unknown.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_a_status_change(env: Env) -> None:
    watch = env.stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == SERVING
    await env.health.set(SERVICE, NOT_SERVING)
    assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
    watch.cancel()


async def test_get_metrics_returns_prometheus_text(env: Env) -> None:
    env.metrics.method("/driver.v1.DriverService/GetDriver", "unary").started.inc()
    response = await http(env.admin.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"# TYPE grpc_server_handled_total counter" in body
    assert b"grpc_server_handling_seconds_bucket" in body
    assert (
        b'grpc_server_started_total{grpc_method="GetDriver",grpc_service="driver.v1.DriverService"'
        b',grpc_type="unary"} 1.0' in body
    )


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /other HTTP/1.1\r\n\r\n", b"404"),
        (b"GET / HTTP/1.0\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"\x00\x01\x02garbage\xff\r\n\r\n", b"400"),
        (b"GET /metrics\r\n\r\n", b"400"),
    ],
)
async def test_other_requests_get_an_error_and_the_port_keeps_serving(
    env: Env, request_bytes: bytes, status: bytes
) -> None:
    response = await http(env.admin.port, request_bytes)
    assert response.startswith(b"HTTP/1.1 " + status), response[:60]
    ok = await http(env.admin.port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    assert (await env.stub.Check(health_pb2.HealthCheckRequest())).status == SERVING


async def test_endless_garbage_line_is_dropped_and_the_port_keeps_serving(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.admin.port)
    try:
        writer.write(b"x" * 100_000)  # no newline: longer than any request line
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert (await env.stub.Check(health_pb2.HealthCheckRequest())).status == SERVING


async def test_stop_ends_open_watches_and_frees_the_port(env: Env) -> None:
    watch = env.stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == SERVING
    await env.admin.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(watch.read(), 5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", env.admin.port)
    await env.admin.stop()  # idempotent: the fixture stops it again
