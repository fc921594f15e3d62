"""The call pipeline's metrics and the instrumented store and bus on a real server: counters
per method and code, message counts for every stream kind, open streams back to 0 afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api import DriverServicer
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.domain import Rejection
from driver_service.interceptors import server_interceptors
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.observability.metrics.instrumented import (
    InstrumentedBus,
    InstrumentedRepository,
)

SERVICE = "driver.v1.DriverService"


@dataclass
class Env:
    stub: pb_grpc.DriverServiceStub
    metrics: ServiceMetrics

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def rpc(self, name: str, method: str, **labels: str) -> float:
        return self.value(name, grpc_service=SERVICE, grpc_method=method, **labels)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    metrics = ServiceMetrics()
    repository = InstrumentedRepository(
        await SqliteRepository.open(tmp_path / "store.sqlite3"), metrics
    )
    tracking = DriverTracking(repository, InstrumentedBus(MemoryBus(), metrics))
    await tracking.start()
    server = grpc.aio.server(
        interceptors=server_interceptors(None, access_log="off", metrics=metrics)
    )
    pb_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Env(pb_grpc.DriverServiceStub(channel), metrics)
    finally:
        await server.stop(0)
        await tracking.close()


def update(driver_id: str, lat: float = 52.5) -> pb.LocationUpdate:
    return pb.LocationUpdate(driver_id=driver_id, latitude=lat, longitude=13.4)


async def test_unary_calls_are_counted_by_method_and_code(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await env.stub.GetDriver(pb.GetDriverRequest(driver_id="nobody"))
    with pytest.raises(grpc.aio.AioRpcError):
        await env.stub.GetDriver(pb.GetDriverRequest(driver_id=""))
    await env.stub.UploadLocations(iter([update("d1")]))
    await env.stub.GetDriver(pb.GetDriverRequest(driver_id="d1"))

    labels = {"grpc_type": "unary"}
    assert env.rpc("grpc_server_started_total", "GetDriver", **labels) == 3
    assert env.rpc("grpc_server_handled_total", "GetDriver", grpc_code="OK", **labels) == 1
    assert env.rpc("grpc_server_handled_total", "GetDriver", grpc_code="NotFound", **labels) == 1
    assert (
        env.rpc("grpc_server_handled_total", "GetDriver", grpc_code="InvalidArgument", **labels)
        == 1
    )
    assert env.rpc("grpc_server_msg_received_total", "GetDriver", **labels) == 3
    assert env.rpc("grpc_server_msg_sent_total", "GetDriver", **labels) == 1  # only the OK one
    assert env.rpc("grpc_server_handling_seconds_count", "GetDriver", **labels) == 3
    assert (
        env.value("driver_service_store_seconds_count", operation="get_driver") == 2
    )  # "" never reaches it


async def test_client_stream_counts_every_message_and_the_group_commit(env: Env) -> None:
    summary = await env.stub.UploadLocations(iter([update("d1", 50 + i) for i in range(5)]))
    assert summary.persisted_count == 5
    labels = {"grpc_type": "client_stream"}
    assert env.rpc("grpc_server_msg_received_total", "UploadLocations", **labels) == 5
    assert env.rpc("grpc_server_msg_sent_total", "UploadLocations", **labels) == 1
    assert env.rpc("grpc_server_handled_total", "UploadLocations", grpc_code="OK", **labels) == 1
    assert env.value("driver_service_commit_batch_size_sum") == 5
    assert env.value("driver_service_store_seconds_count", operation="record_locations") >= 1
    assert env.rpc("grpc_server_open_streams", "UploadLocations") == 0


async def test_server_stream_counts_sent_messages_open_streams_and_watchers(env: Env) -> None:
    await env.stub.UploadLocations(iter([update("w1", 10)]))
    watch = env.stub.StreamLocation(pb.StreamLocationRequest(driver_id="w1"))
    seen = [await watch.read()]
    assert env.rpc("grpc_server_open_streams", "StreamLocation") == 1
    assert env.value("driver_service_watchers") == 1
    await env.stub.UploadLocations(iter([update("w1", 11)]))
    seen.append(await watch.read())
    assert [m.latitude for m in seen] == [10, 11]
    watch.cancel()

    async def closed() -> None:
        while env.rpc("grpc_server_open_streams", "StreamLocation") != 0:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(closed(), 5)
    labels = {"grpc_type": "server_stream"}
    assert env.rpc("grpc_server_msg_sent_total", "StreamLocation", **labels) == 2
    assert env.rpc("grpc_server_msg_received_total", "StreamLocation", **labels) == 1
    assert (
        env.rpc("grpc_server_handled_total", "StreamLocation", grpc_code="Canceled", **labels) == 1
    )
    assert env.value("driver_service_watchers") == 0
    assert env.value("driver_service_bus_publish_seconds_count") >= 1


async def test_bidi_stream_counts_both_directions(env: Env) -> None:
    heartbeat = pb.DriverEvent(heartbeat=pb.HeartbeatPing())
    events = [heartbeat, pb.DriverEvent(location=update("s1")), heartbeat]
    replies = [reply async for reply in env.stub.DriverSession(iter(events))]
    assert len(replies) == 2
    labels = {"grpc_type": "bidi_stream"}
    assert env.rpc("grpc_server_msg_received_total", "DriverSession", **labels) == 3
    assert env.rpc("grpc_server_msg_sent_total", "DriverSession", **labels) == 2
    assert env.rpc("grpc_server_handled_total", "DriverSession", grpc_code="OK", **labels) == 1
    assert env.rpc("grpc_server_open_streams", "DriverSession") == 0


async def test_two_servers_in_one_process_keep_separate_registries() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.rejected[Rejection.INVALID].inc()
    assert (
        first.registry.get_sample_value(
            "driver_service_updates_rejected_total", {"reason": "invalid"}
        )
        == 1
    )
    assert (
        second.registry.get_sample_value(
            "driver_service_updates_rejected_total", {"reason": "invalid"}
        )
        == 0
    )
    body, content_type = first.render()
    assert content_type.startswith("text/plain")
    assert b'driver_service_updates_rejected_total{reason="invalid"} 1.0' in body


async def test_rendered_text_parses_with_consistent_histograms(env: Env) -> None:
    await env.stub.UploadLocations(iter([update("r1")]))
    for _ in range(3):
        await env.stub.GetDriver(pb.GetDriverRequest(driver_id="r1"))
    body, _ = env.metrics.render()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert not [s for f in families.values() for s in f.samples if s.name.endswith("_created")]
    handling = families["grpc_server_handling_seconds"].samples
    get = {"grpc_service": SERVICE, "grpc_method": "GetDriver", "grpc_type": "unary"}
    buckets = [
        s.value for s in handling if s.name.endswith("_bucket") and get.items() <= s.labels.items()
    ]
    assert buckets == sorted(buckets)
    assert (
        buckets[-1]
        == env.rpc("grpc_server_handling_seconds_count", "GetDriver", grpc_type="unary")
        == 3
    )
    assert env.rpc("grpc_server_handling_seconds_sum", "GetDriver", grpc_type="unary") > 0
