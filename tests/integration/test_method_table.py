"""The production server serves every method from one table (interceptors/registration.py):
grpc.aio holds one pending request for all of them instead of one per method (each of
which cost every call), and every service stays reachable, each call through the pipeline.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.interceptors import CallPipeline
from driver_service.interceptors.registration import one_table
from driver_service.interceptors.selector import DEFAULT_EXEMPT
from driver_service.server.composition import build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server

SECRET = b"integration-test-secret-of-32-bytes!!"
#: Every driver.v1 service `serve` runs (reflection must list each).
DRIVER_SERVICES = {
    "driver.v1.DriverService",
    "driver.v1.DriverBatchService",
    "driver.v1.DispatchService",
    "driver.v1.ZoneService",
    "driver.v1.EventService",
    "driver.v1.HistoryService",
    "driver.v1.WebhookService",
}


@pytest.fixture
async def production(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """`serve` with a token secret: every driver.v1 call needs a token."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    settings = ServerSettings("127.0.0.1:0", "", data_dir=tmp_path, token_secret_file=secret)
    settings = dataclasses.replace(settings, insecure=True)  # no TLS
    running = await start_server(settings, await build_services(settings))
    try:
        yield running
    finally:
        await running.stop(0)


def _pending_requests() -> Counter[str]:
    """grpc.aio's pending request tasks by kind: `_request_call` serves generic handlers,
    `_request_registered_call` one method registered by name."""
    names = (getattr(task.get_coro(), "__name__", "") for task in asyncio.all_tasks())
    return Counter(name for name in names if name.startswith("_request"))


async def test_the_production_server_holds_one_pending_request_for_every_method(
    production: RunningServer,
) -> None:
    await asyncio.sleep(0.05)  # the accept loop has armed its requests
    assert _pending_requests() == {"_request_call": 1}


def _methods(target: str) -> list[tuple[str, str, bool, bool]]:
    """Every method the server lists by reflection: (path, service, client and server
    streaming)."""
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        return [
            (f"/{name}/{m.name}", name, m.client_streaming, m.server_streaming)
            for name in database.get_services()
            for m in pool.FindServiceByName(name).methods
        ]


async def _code_of(
    channel: grpc.aio.Channel, path: str, streams: tuple[bool, bool], timeout_s: float
) -> Any:
    """The status of one call with an empty request and no token (bytes as they are)."""
    client_streaming = streams[0]
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[streams]
    request: Any = iter([b""]) if client_streaming else b""
    return await kind(path)(request, timeout=timeout_s).code()


async def test_every_method_is_reachable_and_every_driver_call_goes_through_the_pipeline(
    production: RunningServer,
) -> None:
    target = f"127.0.0.1:{production.port}"
    methods = await asyncio.to_thread(_methods, target)
    assert {service for _, service, _, _ in methods} >= DRIVER_SERVICES | set(DEFAULT_EXEMPT[:2])
    async with grpc.aio.insecure_channel(target) as channel:
        for path, service, *streams in methods:
            ours = service.startswith("driver.v1.")
            # A refusal comes at once: a long deadline only keeps a loaded machine from
            # failing the test; the exempt streams (health's Watch) run until it expires.
            code = await _code_of(channel, path, (streams[0], streams[1]), 10.0 if ours else 2.0)
            if ours:
                assert code == grpc.StatusCode.UNAUTHENTICATED, path  # refused by the pipeline
            else:  # exempt from auth (health, reflection): answered, not unknown
                assert code != grpc.StatusCode.UNIMPLEMENTED, path


class _OnlyGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A service that registers a generic handler only (it cannot list its methods)."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method != "/test.Echo/Say":
            return None

        async def say(request: bytes, context: object) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(say)


class _Drivers(pb_grpc.DriverServiceServicer):
    async def GetDriver(self, request: pb.GetDriverRequest, context: object) -> Any:  # noqa: N802
        return pb.GetDriverResponse(driver_id=request.driver_id)


@pytest.fixture
async def table_target() -> AsyncIterator[str]:
    """A server with services registered through `one_table` the three ways services do:
    generated code (by name and generic), generic only, and the health service."""
    server = grpc.aio.server()
    services = one_table(server)
    pb_grpc.add_DriverServiceServicer_to_server(_Drivers(), services)
    services.add_generic_rpc_handlers((_OnlyGeneric(),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, services)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_one_table_serves_generated_generic_only_and_health_services(
    table_target: str,
) -> None:
    assert _pending_requests() == {"_request_call": 1}
    async with grpc.aio.insecure_channel(table_target) as channel:
        assert await channel.unary_unary("/test.Echo/Say")(b"hi", timeout=5) == b"hi"
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        drivers = pb_grpc.DriverServiceStub(channel)
        reply = await drivers.GetDriver(pb.GetDriverRequest(driver_id="d-1"), timeout=5)
        assert reply.driver_id == "d-1"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/test.Echo/Shout")(b"hi", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert err.value.details() == "Method not found!"


async def test_the_pipeline_wraps_methods_found_either_way() -> None:
    """`CallPipeline.around`: a method the table holds and one a generic-only handler finds
    both run in the pipeline (it returns a caller's request id)."""
    server = grpc.aio.server()
    services = CallPipeline().around(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), services)
    services.add_generic_rpc_handlers((_OnlyGeneric(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")(b"hi", metadata=(("x-request-id", "r1"),))
            assert await say == b"hi"
            assert ("x-request-id", "r1") in tuple(await say.trailing_metadata())
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "r2"),)
            )
            assert (await check).status == health_pb2.HealthCheckResponse.SERVING
            assert ("x-request-id", "r2") in tuple(await check.trailing_metadata())
    finally:
        await server.stop(0)
