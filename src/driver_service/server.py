"""Runs one gRPC server: services, health, reflection, signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from driver_service._gen.driver.v1 import driver_pb2, driver_pb2_grpc
from driver_service.api import DriverServicer
from driver_service.bootstrap import build_tracking
from driver_service.config import ServerSettings, parse_listen
from driver_service.interceptors import RecoveryInterceptor
from driver_service.service import DriverTracking

log = logging.getLogger(__name__)

SERVICE_NAME = driver_pb2.DESCRIPTOR.services_by_name["DriverService"].full_name


@dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.aio.Server
    port: int
    tracking: DriverTracking
    health: health_aio.HealthServicer

    async def stop(self, grace_s: float) -> None:
        """Stop serving: NOT_SERVING, end live streams, let calls in flight finish within
        the grace period, then commit everything accepted and close the store."""
        await self.health.enter_graceful_shutdown()
        self.tracking.begin_shutdown()
        await self.server.stop(grace_s)
        await self.tracking.close()


async def start_server(settings: ServerSettings, tracking: DriverTracking) -> RunningServer:
    server = grpc.aio.server(interceptors=[RecoveryInterceptor()])
    driver_pb2_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [SERVICE_NAME, health.SERVICE_NAME]
    if settings.reflection:
        services.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(services, server)
    host, port = parse_listen(settings.listen)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, tracking, health_servicer)


async def serve(settings: ServerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; a second signal exits at once."""
    tracking = await build_tracking(settings)
    try:
        running = await start_server(settings, tracking)
    except BaseException:
        await tracking.close()
        raise
    if not settings.listen_is_loopback():
        log.warning("serving PLAINTEXT on %s: anyone on the network can call it", settings.listen)
    log.info("driver-service listening on port %d (store %s)", running.port, settings.sqlite_path())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()
    await running.stop(settings.shutdown_grace_s)
    log.info("driver-service stopped")
