"""Each keepalive setting takes effect on a real server: grpc core ignores a misspelt channel
argument silently, so every test here would pass against grpc's defaults only if the argument
did nothing. Raw HTTP/2 (h2) shows the GOAWAY frames and pings that grpc's client hides."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import h2.events
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2.errors import ErrorCodes

from driver_service.server.keepalive import KeepaliveSettings, server_options
from tests.helpers.raw_h2 import RawH2

SHORT = KeepaliveSettings(
    time_s=60, timeout_s=1, max_connection_idle_s=60, max_connection_age_s=60, min_time_s=1
)


@asynccontextmanager
async def keepalive_server(settings: KeepaliveSettings) -> AsyncIterator[int]:
    """A grpc.aio server with only the health service (its Watch is a long-lived stream)."""
    server = grpc.aio.server(options=server_options(settings))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield port
    finally:
        await server.stop(0)


async def ping_every(raw: RawH2, interval_s: float, count: int) -> None:
    for _ in range(count):
        raw.ping()
        await raw.read_for(interval_s)
        if raw.goaway() is not None:
            return


async def test_pinging_faster_than_min_time_gets_goaway_too_many_pings() -> None:
    async with keepalive_server(SHORT) as port:
        raw = await RawH2.connect(port)
        try:
            await ping_every(raw, 0.05, 10)
            await raw.wait_for(lambda: raw.goaway() is not None, 3)
            goaway = raw.goaway()
            assert goaway is not None, "server tolerated 10 pings in 0.5 s"
            assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
            assert goaway.additional_data == b"too_many_pings"
        finally:
            raw.close()


async def test_pinging_slower_than_min_time_without_calls_is_allowed() -> None:
    # grpc's defaults (min interval 5 min, no pings without calls) would GOAWAY this client:
    # passing proves both the min time and permit-without-stream arguments are applied.
    settings = KeepaliveSettings(
        time_s=60, max_connection_idle_s=60, max_connection_age_s=60, min_time_s=0.2
    )
    async with keepalive_server(settings) as port:
        raw = await RawH2.connect(port)
        try:
            await ping_every(raw, 0.35, 6)
            await raw.read_for(0.2)
            acks = sum(isinstance(e, h2.events.PingAckReceived) for e in raw.events)
            assert raw.goaway() is None, f"GOAWAY {raw.goaway()} for pings 0.35 s apart"
            assert acks == 6
        finally:
            raw.close()


async def test_pings_without_calls_are_strikes_when_not_permitted() -> None:
    settings = KeepaliveSettings(
        time_s=60,
        max_connection_idle_s=60,
        max_connection_age_s=60,
        min_time_s=0.2,
        permit_without_stream=False,
    )
    async with keepalive_server(settings) as port:
        raw = await RawH2.connect(port)
        try:
            await ping_every(raw, 0.35, 8)
            goaway = raw.goaway()
            assert goaway is not None, "idle pings were accepted although not permitted"
            assert goaway.additional_data == b"too_many_pings"
        finally:
            raw.close()


async def test_idle_connection_is_closed_after_max_connection_idle() -> None:
    settings = KeepaliveSettings(
        time_s=60, max_connection_idle_s=1.0, max_connection_age_s=60, min_time_s=1
    )
    async with keepalive_server(settings) as port:
        started = time.monotonic()
        raw = await RawH2.connect(port)
        try:
            await raw.wait_for(lambda: raw.goaway() is not None, 5)
            elapsed = time.monotonic() - started
            goaway = raw.goaway()
            assert goaway is not None, "idle connection still open after 5 s"
            # grpc 1.75-1.85 close with INTERNAL_ERROR "connection idle" (older cores: "max_idle").
            assert goaway.additional_data in (b"connection idle", b"max_idle"), goaway
            assert 0.9 <= elapsed <= 3.0, elapsed
        finally:
            raw.close()


async def test_stream_survives_max_age_until_the_grace_period_ends() -> None:
    settings = KeepaliveSettings(
        time_s=60,
        max_connection_idle_s=60,
        max_connection_age_s=0.5,
        max_connection_age_grace_s=1.5,
        min_time_s=1,
    )
    async with (
        keepalive_server(settings) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        started = time.monotonic()
        statuses: list[int] = []
        code: grpc.StatusCode | None = None
        try:
            async for response in watch:
                statuses.append(response.status)  # noqa: PERF401 - keeps what came before the error
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert statuses == [health_pb2.HealthCheckResponse.SERVING]
        elapsed = time.monotonic() - started
        # Age (0.5 s, ±10 % jitter) sends GOAWAY; the stream lives on through the grace.
        assert code == grpc.StatusCode.UNAVAILABLE
        assert 1.6 <= elapsed <= 5.0, elapsed


async def test_server_keepalive_closes_a_peer_that_never_acks_pings() -> None:
    settings = KeepaliveSettings(
        time_s=0.3, timeout_s=0.3, max_connection_idle_s=60, max_connection_age_s=60
    )
    async with keepalive_server(settings) as port:
        dead = await RawH2.connect(port)
        alive = await RawH2.connect(port)
        try:
            started = time.monotonic()
            while time.monotonic() - started < 2.5 and dead.eof_at is None:
                await dead.read_for(0.05)
                await alive.read_for(0.05)
                alive.flush()  # acks the server's keepalive pings
            assert dead.has(h2.events.PingReceived), "server sent no keepalive ping"
            assert dead.eof_at is not None, "unresponsive peer still connected after 2.5 s"
            assert dead.eof_at - started <= 2.0
            assert alive.has(h2.events.PingReceived)
            assert alive.eof_at is None, "a peer that acks pings was disconnected"
        finally:
            dead.close()
            alive.close()
