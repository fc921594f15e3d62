"""The event log published to NATS JetStream (--nats-url), against a private `nats-server -js`
of each test: every event is in the stream, once (deduplicated by its id, `Nats-Msg-Id`), in
log order, read back by a JetStream consumer; a restart of the service resumes after the
broker's newest event; a broker killed and started again on its store loses nothing; a paused
broker holds up neither ingestion nor the service's health, only its own."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service.adapters.nats.jetstream import JetStreamSink
from driver_service.app.event_publisher import EventPublisher
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.server.composition import Services, build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import EVENT_SINK_HEALTH, RunningServer, start_server
from tests.helpers.grpc_calls import online
from tests.helpers.nats import NatsServer, read_stream
from tests.helpers.waiting import eventually

STREAM = "TEST_EVENTS"
PREFIX = "test.events"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Service:
    running: RunningServer
    services: Services
    channel: grpc.aio.Channel
    metrics: ServiceMetrics

    def sample(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"sink": "nats"})
        assert value is not None, name
        return value

    @property
    def publisher(self) -> EventPublisher:
        assert self.services.publisher is not None
        return self.services.publisher

    async def online(self, drivers: list[str]) -> None:
        await online(self.channel, drivers)

    async def logged_ids(self) -> list[str]:
        rows = await self.services.events._log.read_events(0, 1_000_000)
        return [str(r.event_id) for r in rows]

    async def health(self, service: str) -> int:
        reply = await health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


@dataclass
class Harness:
    tmp_path: Path
    nats: NatsServer
    service: Service | None = None

    async def start(self) -> Service:
        settings = ServerSettings(
            listen="127.0.0.1:0", admin_listen="", data_dir=self.tmp_path, insecure=True,
            rate_limit=0, stale_after=86_400, nats_url=self.nats.url, nats_stream=STREAM,
            nats_subject_prefix=PREFIX, nats_timeout=1.0,
        )  # fmt: skip
        metrics = ServiceMetrics()
        services = await build_services(settings, metrics)
        running = await start_server(settings, services, metrics)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        self.service = Service(running, services, channel, metrics)
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.channel.close()
            await self.service.running.stop(0)
            self.service = None

    async def stream(self) -> list[str]:
        """The event ids in the stream, in stream order."""
        return [m.msg_id for m in await read_stream(self.nats.url, STREAM, f"{PREFIX}.>")]

    async def wait_published(self, ids: list[str]) -> None:
        service = self.service
        assert service is not None
        await eventually(
            lambda: service.publisher.cursor == int(ids[-1]), 30, "every event acknowledged"
        )


@pytest.fixture
async def harness(tmp_path: Path, private_nats: NatsServer) -> AsyncIterator[Harness]:
    h = Harness(tmp_path, private_nats)
    try:
        yield h
    finally:
        private_nats.resume()
        await h.stop()


async def test_every_event_is_published_once_by_id_in_log_order(harness: Harness) -> None:
    service = await harness.start()
    await service.online([f"d-{n}" for n in range(120)])
    logged = await service.logged_ids()
    assert len(logged) == 120
    await harness.wait_published(logged)
    assert await harness.stream() == logged
    messages = await read_stream(harness.nats.url, STREAM, f"{PREFIX}.driver.online")
    first = json.loads(messages[0].body)
    assert messages[0].subject == f"{PREFIX}.driver.online"
    assert (first["type"], first["data"]["id"], first["data"]["driverId"]) == (
        "driver.online", logged[0], "d-0",
    )  # fmt: skip

    # Published again (a lost ack, another replica): the broker keeps one of each.
    sink = JetStreamSink([harness.nats.url], STREAM, PREFIX)
    try:
        await sink.publish(await service.services.events._log.read_events(0, 1000))
        assert await sink.last_published_id() == int(logged[-1])
    finally:
        await sink.close()
    assert await harness.stream() == logged

    # A restart of the service resumes after the broker's newest event: nothing twice.
    await harness.stop()
    service = await harness.start()
    await service.online([f"e-{n}" for n in range(30)])
    logged = await service.logged_ids()
    assert len(logged) == 150
    await harness.wait_published(logged)
    assert await harness.stream() == logged


async def test_a_broker_killed_and_started_again_loses_nothing(harness: Harness) -> None:
    service = await harness.start()
    await service.online([f"a-{n}" for n in range(50)])
    await harness.wait_published(await service.logged_ids())
    harness.nats.kill()
    await service.online([f"b-{n}" for n in range(50)])  # logged while the broker is away
    await eventually(lambda: service.publisher.problem is not None, 30, "publishing fails")
    harness.nats.start()  # the same port and store
    await service.online([f"c-{n}" for n in range(50)])
    logged = await service.logged_ids()
    await harness.wait_published(logged)
    assert await harness.stream() == logged
    assert service.publisher.problem is None
    assert service.sample("driver_service_event_sink_failures_total") >= 1
    assert service.sample("driver_service_event_sink_published_total") >= len(logged)
    assert service.sample("driver_service_event_sink_lag_seconds_count") >= len(logged)
    assert service.sample("driver_service_event_sink_up") == 1
    assert service.sample("driver_service_event_sink_behind") == 0


async def test_a_paused_broker_holds_up_only_publishing(harness: Harness) -> None:
    service = await harness.start()
    await service.online([f"a-{n}" for n in range(20)])
    await harness.wait_published(await service.logged_ids())
    await service.running.check_sink()
    assert await service.health(EVENT_SINK_HEALTH) == SERVING

    harness.nats.pause()  # SIGSTOP: connections stay open, nothing answers
    await service.online(["b-0"])
    await eventually(lambda: service.publisher.problem is not None, 30, "publishing fails")
    stuck_at = service.publisher.cursor
    # Ingestion goes on at its pace, every update acknowledged, while nothing is published.
    started = time.perf_counter()
    for batch in range(10):
        await service.online([f"c-{batch}-{n}" for n in range(20)])
    paused_s = time.perf_counter() - started
    assert service.publisher.cursor == stuck_at
    assert service.sample("driver_service_event_sink_up") == 0
    assert service.sample("driver_service_event_sink_behind") >= 200
    await service.running.check_sink()
    assert await service.health(EVENT_SINK_HEALTH) == NOT_SERVING
    assert await service.health("") == SERVING  # the service itself is healthy

    harness.nats.resume()
    logged = await service.logged_ids()
    await harness.wait_published(logged)
    assert await harness.stream() == logged
    await service.running.check_sink()
    assert await service.health(EVENT_SINK_HEALTH) == SERVING
    print(f"\n200 updates in 10 uploads while the broker was paused: {paused_s:.3f} s")
