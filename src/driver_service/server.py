"""Runs one gRPC server: credentials, interceptors, limits, keepalive, health, reflection,
signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from driver_service._gen.driver.v1 import (
    dispatch_pb2,
    dispatch_pb2_grpc,
    driver_pb2,
    driver_pb2_grpc,
)
from driver_service.admin import AdminServer, start_admin
from driver_service.api import DriverServicer
from driver_service.api.batch_servicer import BATCH_RULES, add_batch_service
from driver_service.api.batch_servicer import SERVICE_NAME as BATCH_SERVICE_NAME
from driver_service.api.dispatch_servicer import DispatchServicer
from driver_service.bootstrap import Services, build_services
from driver_service.config import ConfigError, ServerSettings, grpc_address
from driver_service.dispatch import DISPATCH_RULES, Dispatch
from driver_service.gc_tuning import settle_heap
from driver_service.interceptors import (
    DEFAULT_RULES,
    AuthPolicy,
    ExemptServices,
    call_pipeline,
)
from driver_service.keepalive import server_options as keepalive_options
from driver_service.metrics import ServiceMetrics
from driver_service.security import (
    CertificateReloader,
    ServerTlsFiles,
    TlsConfigError,
    TokenValidator,
    server_credentials,
)
from driver_service.service import DriverTracking
from driver_service.workers import worker_index

log = logging.getLogger(__name__)

SERVICE_NAME = driver_pb2.DESCRIPTOR.services_by_name["DriverService"].full_name
DISPATCH_SERVICE_NAME = dispatch_pb2.DESCRIPTOR.services_by_name["DispatchService"].full_name
HEALTH_CHECK_INTERVAL_S = 2.0
#: Metadata (headers) a caller may send; tokens and request ids fit comfortably.
MAX_METADATA_BYTES = 16 * 1024

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def build_auth_policy(settings: ServerSettings) -> AuthPolicy | None:
    options = {
        "issuer": settings.token_issuer,
        "audience": settings.token_audience,
        "leeway_s": settings.token_leeway,
    }
    if settings.token_secret_file is not None:
        validator = TokenValidator.from_secret_file(settings.token_secret_file, **options)
    elif settings.token_public_key is not None:
        validator = TokenValidator.from_public_key_file(settings.token_public_key, **options)
    elif settings.token_jwks is not None:
        validator = TokenValidator.from_jwks_file(settings.token_jwks, **options)
    else:
        return None
    return AuthPolicy(
        validator,
        rules={**DEFAULT_RULES, **DISPATCH_RULES, **BATCH_RULES},
        exempt=ExemptServices.of(settings.auth_exempt),
    )


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Limits and keepalive as grpc core channel arguments (names checked in tests: a
    misspelt argument is silently ignored)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        # Workers share the port; a lone server must not silently share it with another.
        ("grpc.so_reuseport", 1 if worker_index() is not None else 0),
        *keepalive_options(settings.keepalive()),
    ]


@dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.aio.Server
    port: int
    tracking: DriverTracking
    health: health_aio.HealthServicer
    reloader: CertificateReloader | None = None
    admin: AdminServer | None = None
    dispatch: Dispatch | None = None
    _monitor: asyncio.Task[None] | None = field(default=None, repr=False)

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Stop serving: NOT_SERVING, end live streams, let calls in flight finish within
        the grace period, then commit everything accepted and close the store."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.health.enter_graceful_shutdown()
        self.tracking.begin_shutdown()
        await self.server.stop(grace_s)
        if self.dispatch is not None:
            await self.dispatch.close()
        await self.tracking.close()
        if self.admin is not None:  # last: probes see NOT_SERVING while the server drains
            await self.admin.stop()

    def start_monitoring(self) -> None:
        self._monitor = asyncio.get_running_loop().create_task(self.monitor_store())

    async def monitor_store(self, interval_s: float = HEALTH_CHECK_INTERVAL_S) -> None:
        """Keep health in step with the store and the bus: NOT_SERVING while either fails,
        SERVING again once both answer."""
        serving = True
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.wait_for(self.tracking.repository.ping(), interval_s)
                await asyncio.wait_for(self.tracking.bus.ping(), interval_s)
                healthy = True
            except Exception as exc:  # noqa: BLE001 - any failure means not serving
                if serving:
                    log.warning("health check failed: %r", exc)
                healthy = False
            if healthy != serving:
                serving = healthy
                log.warning("health: %s", "SERVING" if healthy else "NOT_SERVING")
                await self.set_serving(healthy)


async def start_server(
    settings: ServerSettings,
    services: Services | DriverTracking,
    metrics: ServiceMetrics | None = None,
) -> RunningServer:
    """Start serving `services` (or the tracking service alone); with `metrics`, count every
    call and serve /metrics."""
    if isinstance(services, Services):
        tracking, dispatch = services.tracking, services.dispatch
    else:
        tracking, dispatch = services, None
    try:
        auth = build_auth_policy(settings)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"token key: {exc}") from exc
    pipeline = call_pipeline(auth, access_log=settings.access_log, metrics=metrics)
    server = grpc.aio.server(options=server_options(settings))
    # Every service is registered through the pipeline: all of them get its checks.
    services_server = pipeline.around(server)
    driver_pb2_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), services_server)
    add_batch_service(services_server, tracking)
    services_served = [SERVICE_NAME, BATCH_SERVICE_NAME]
    if dispatch is not None:
        dispatch_pb2_grpc.add_DispatchServiceServicer_to_server(
            DispatchServicer(dispatch), services_server
        )
        services_served.append(DISPATCH_SERVICE_NAME)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services_server)
    if settings.reflection:
        reflection.enable_server_reflection(
            [*services_served, health.SERVICE_NAME, reflection.SERVICE_NAME], services_server
        )
    bound, reloader = _bind(server, settings)
    await server.start()
    running = RunningServer(server, bound, tracking, health_servicer, reloader, dispatch=dispatch)
    await running.set_serving(True)
    if settings.admin_listen:
        try:
            running.admin = await start_admin(
                settings.admin_listen,
                health_servicer,
                metrics or ServiceMetrics(),
                reuse_port=worker_index() is not None,
            )
        except BaseException:
            await server.stop(0)
            raise
    running.start_monitoring()
    return running


def _bind(
    server: grpc.aio.Server, settings: ServerSettings
) -> tuple[int, CertificateReloader | None]:
    """Bind the main port: plaintext with --insecure, else mTLS with reloadable certificates."""
    address = grpc_address(settings.listen)
    if settings.insecure:
        return server.add_insecure_port(address), None
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if cert is None or key is None or client_ca is None:
        raise ConfigError("TLS: certificate, key and client CA are all required")
    try:
        credentials, reloader = server_credentials(ServerTlsFiles(cert, key, client_ca))
    except TlsConfigError as exc:
        raise ConfigError(f"TLS: {exc}") from exc
    return server.add_secure_port(address, credentials), reloader


async def serve(settings: ServerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; a second signal exits at once."""
    metrics = ServiceMetrics()
    metrics.watch_process(asyncio.get_running_loop())
    services = await build_services(settings, metrics)
    try:
        running = await start_server(settings, services, metrics)
    except BaseException:
        await services.close()
        raise
    if settings.insecure and not settings.listen_is_loopback():
        log.warning(
            "serving PLAINTEXT on %s without TLS: anyone on the network can read and call it",
            settings.listen,
        )
    if not settings.auth_enabled:
        log.warning("no token key configured: every caller may call every method")
    settle_heap()
    log.info(
        "driver-service listening on port %d (%s, store %s)",
        running.port,
        "plaintext" if settings.insecure else "mTLS",
        settings.store_description(),
    )
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
    await running.stop(settings.shutdown_grace)
    log.info("driver-service stopped")
