"""Server reflection, read with grpcio-reflection's own client: tools like grpcurl and
Postman can list the services and call them without the proto files."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from driver_service.server.running import RunningServer


def _describe(target: str) -> tuple[list[str], list[tuple[str, str, str, bool, bool]]]:
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("driver.v1.DriverService")
        methods = [
            (m.name, m.input_type.full_name, m.output_type.full_name,
             m.client_streaming, m.server_streaming)
            for m in service.methods
        ]  # fmt: skip
    return services, methods


async def test_reflection_lists_services_and_describes_methods(server: RunningServer) -> None:
    services, methods = await asyncio.to_thread(_describe, f"127.0.0.1:{server.port}")
    assert "driver.v1.DriverService" in services
    assert "grpc.health.v1.Health" in services
    assert ("GetDriver", "driver.v1.GetDriverRequest", "driver.v1.GetDriverResponse",
            False, False) in methods  # fmt: skip
    assert ("DriverSession", "driver.v1.DriverEvent", "driver.v1.ServerCommand",
            True, True) in methods  # fmt: skip
    assert len(methods) == 4
