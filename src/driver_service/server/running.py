"""Runs one gRPC server: credentials, interceptors, limits, keepalive, health, reflection,
signals and graceful shutdown."""

from __future__ import annotations

import asyncio
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
    events_pb2,
    events_pb2_grpc,
    history_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
    zones_pb2,
    zones_pb2_grpc,
)
from driver_service.api import DriverServicer
from driver_service.api.batch_servicer import SERVICE_NAME as BATCH_SERVICE_NAME
from driver_service.api.batch_servicer import add_batch_service
from driver_service.api.dispatch_servicer import DispatchServicer
from driver_service.api.event_servicer import EventServicer
from driver_service.api.history_servicer import SERVICE_NAME as HISTORY_SERVICE_NAME
from driver_service.api.history_servicer import HistoryServicer
from driver_service.api.rules import RULES
from driver_service.api.servicer import add_driver_service
from driver_service.api.webhook_servicer import WebhookServicer
from driver_service.api.zone_servicer import ZoneServicer
from driver_service.app.tracking import DriverTracking
from driver_service.dispatch.service import Dispatch
from driver_service.http.app import Backends, FrontDoor, HttpOptions
from driver_service.http.server import HttpServer, start_http
from driver_service.interceptors import (
    AuthPolicy,
    ExemptServices,
    call_pipeline,
)
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor
from driver_service.security import (
    CertificateReloader,
    ServerTlsFiles,
    TlsConfigError,
    TokenValidator,
    server_credentials,
)
from driver_service.server.admin import AdminServer, start_admin
from driver_service.server.composition import Services, build_services
from driver_service.server.config import (
    ConfigError,
    ServerSettings,
    grpc_address,
    parse_listen,
)
from driver_service.server.heap import settle_heap
from driver_service.server.keepalive import server_options as keepalive_options
from driver_service.server.startup import TLS_SETTINGS, preflight, startup_step, store_setting
from driver_service.server.workers import worker_index

log = logging.getLogger(__name__)

SERVICE_NAME = driver_pb2.DESCRIPTOR.services_by_name["DriverService"].full_name
DISPATCH_SERVICE_NAME = dispatch_pb2.DESCRIPTOR.services_by_name["DispatchService"].full_name
ZONE_SERVICE_NAME = zones_pb2.DESCRIPTOR.services_by_name["ZoneService"].full_name
EVENT_SERVICE_NAME = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
WEBHOOK_SERVICE_NAME = webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name
#: Health pings the store and the bus this often, each bounded by this too (and by its own
#: --store-timeout / --redis-timeout): a hung dependency shows as NOT_SERVING within ~2 s.
HEALTH_CHECK_INTERVAL_S = 1.0
#: After a failed commit, health stays NOT_SERVING this long before a successful write
#: probe may turn it back (a small probe can succeed on a disk too full for real commits;
#: while uploads keep failing, each failure renews it). Short, so that a store that comes
#: back is trusted again within ~2 s even when no upload arrives to prove it.
COMMIT_FAILURE_HOLD_S = 1.0
#: A fatal background failure: the process exits with this code after stopping (EX_SOFTWARE),
#: so that the orchestrator restarts it.
EXIT_FATAL = 70
#: Metadata (headers) a caller may send; tokens and request ids fit comfortably.
MAX_METADATA_BYTES = 16 * 1024

SERVING = health_pb2.HealthCheckResponse.SERVING
#: The health service name that says whether publishing to the broker (--nats-url) works.
EVENT_SINK_HEALTH = "driver_service.EventSink"
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
        rules=RULES,
        exempt=ExemptServices.of(settings.auth_exempt),
    )


def _auth_policy(settings: ServerSettings) -> AuthPolicy | None:
    """build_auth_policy, with an unusable key reported as the flag that names it."""
    try:
        return build_auth_policy(settings)
    except (OSError, ValueError) as exc:
        name = "--token-secret-file"
        if settings.token_public_key is not None:
            name = "--token-public-key"
        elif settings.token_jwks is not None:
            name = "--token-jwks"
        raise ConfigError(f"{name}: {exc}") from exc


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
    http: HttpServer | None = None
    dispatch: Dispatch | None = None
    services: Services | None = None
    _monitor: Supervised | None = field(default=None, repr=False)
    #: Set when a fatal background task failed: `serve` stops and exits non-zero.
    fatal: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    #: What health says now (kept here, not in the monitor: a restarted monitor must not
    #: assume SERVING while NOT_SERVING is published).
    serving: bool = field(default=True, repr=False)
    _health_update: asyncio.Task[None] | None = field(default=None, repr=False)
    #: What health says of the broker sink (EVENT_SINK_HEALTH) now, if there is one.
    sink_serving: bool | None = field(default=None, repr=False)

    @property
    def supervisor(self) -> TaskSupervisor:
        return self.tracking.supervisor

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Stop serving: NOT_SERVING, end live streams, let calls in flight finish within
        the grace period, then commit everything accepted and close the store."""
        if self._monitor is not None:
            await self._monitor.stop()
        await self.health.enter_graceful_shutdown()
        self.tracking.begin_shutdown()
        if self.http is not None:  # SSE streams end saying so, before their sources close
            self.http.door.stopping.set()
        if self.services is not None:  # WatchEvents streams end; no more offline sweeps
            await self.services.close_events()
        if self.http is not None:  # both doors drain together, within the same grace
            await asyncio.gather(self.server.stop(grace_s), self.http.stop(grace_s))
        else:
            await self.server.stop(grace_s)
        if self.dispatch is not None:
            await self.dispatch.close()
        await self.tracking.close()
        await self.supervisor.close()
        if self.admin is not None:  # last: probes see NOT_SERVING while the server drains
            await self.admin.stop()

    async def first_health(self) -> None:
        """Health's first answer, from a check rather than assumed: a store or a bus that
        does not work at start-up (Redis down, its pub/sub connection not made yet) shows as
        NOT_SERVING at once, not only at the monitor's first check a second later."""
        problem = await self.health_problem(HEALTH_CHECK_INTERVAL_S)
        if problem is not None:
            log.warning("health: NOT_SERVING: %s", problem)
        await self.set_serving(problem is None)
        await self.check_sink()

    def start_monitoring(self) -> None:
        self.supervisor.on_fatal = self._on_fatal
        self._monitor = self.supervisor.start("health-monitor", self.monitor_store, Policy.RESTART)

    def _on_fatal(self, task: str, error: BaseException) -> None:
        """A task the service cannot work without ended: stop saying SERVING at once."""
        self.fatal.set()
        self._health_update = asyncio.get_running_loop().create_task(self.set_serving(False))

    async def monitor_store(self, interval_s: float = HEALTH_CHECK_INTERVAL_S) -> None:
        """Keep health in step with what the service needs to work: NOT_SERVING while the
        store or the bus fails or commits fail, SERVING again once all of them work."""
        while True:
            await asyncio.sleep(interval_s)
            await self.check_sink()
            problem = await self.health_problem(interval_s)
            healthy = problem is None
            if healthy != self.serving:
                if healthy:
                    log.warning("health: SERVING")
                else:
                    log.warning("health: NOT_SERVING: %s", problem)
                await self.set_serving(healthy)

    async def check_sink(self) -> None:
        """Health of EVENT_SINK_HEALTH: NOT_SERVING while publishing to the broker fails.
        Kept apart from the service's own health: ingestion does not need the broker (the
        log keeps the events until it takes them), so a broker outage must not take
        replicas out of a load balancer, yet a probe or an operator can see it."""
        publisher = self.services.publisher if self.services is not None else None
        if publisher is None:
            return
        ok = publisher.problem is None
        if ok != self.sink_serving:
            if self.sink_serving is not None or not ok:
                log.warning("health of %s: %s", EVENT_SINK_HEALTH, publisher.problem or "SERVING")
            self.sink_serving = ok
            await self.health.set(EVENT_SINK_HEALTH, SERVING if ok else NOT_SERVING)

    async def health_problem(self, timeout_s: float) -> str | None:
        """Why the service cannot serve now, or None. The store's ping includes a write, so
        a store that cannot commit (a full disk) is found even while no update arrives."""
        fatal = self.supervisor.fatal_failure
        if fatal is not None:
            return f"background task {fatal} failed"
        writer = self.tracking.writer
        if not writer.running:
            return "the location writer is not running"
        if writer.failed_within(COMMIT_FAILURE_HOLD_S):
            return "committing location updates failed"
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a ping that completes
        # as the monitor is stopped, swallowing the stop, and the monitor (which only sleeps
        # and pings) would hold shutdown up forever (tests/integration/
        # test_health_monitor_stop.py).
        try:
            async with asyncio.timeout(timeout_s):
                await self.tracking.repository.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means not serving
            return f"store: {exc!r}"
        if writer.failing:
            writer.commit_succeeded_elsewhere()  # the store takes writes again
        try:
            async with asyncio.timeout(timeout_s):
                await self.tracking.bus.ping()
        except Exception as exc:  # noqa: BLE001
            return f"bus: {exc!r}"
        return None


async def start_server(
    settings: ServerSettings,
    services: Services | DriverTracking,
    metrics: ServiceMetrics | None = None,
) -> RunningServer:
    """Start serving `services` (or the tracking service alone); with `metrics`, count every
    call and serve /metrics."""
    if isinstance(services, Services):
        tracking, dispatch, full = services.tracking, services.dispatch, services
    else:
        tracking, dispatch, full = services, None, None
    auth = _auth_policy(settings)
    pipeline = call_pipeline(auth, access_log=settings.access_log, metrics=metrics)
    server = grpc.aio.server(options=server_options(settings))
    # Every service is registered through the pipeline: all of them get its checks.
    services_server = pipeline.around(server)
    add_driver_service(services_server, DriverServicer(tracking))
    add_batch_service(services_server, tracking)
    services_served = [SERVICE_NAME, BATCH_SERVICE_NAME]
    if dispatch is not None:
        dispatch_pb2_grpc.add_DispatchServiceServicer_to_server(
            DispatchServicer(dispatch), services_server
        )
        services_served.append(DISPATCH_SERVICE_NAME)
    if full is not None:
        zones_pb2_grpc.add_ZoneServiceServicer_to_server(ZoneServicer(full.zones), services_server)
        events_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(full.events), services_server
        )
        services_served += [ZONE_SERVICE_NAME, EVENT_SERVICE_NAME]
        history_pb2_grpc.add_HistoryServiceServicer_to_server(
            HistoryServicer(full.history), services_server
        )
        services_served.append(HISTORY_SERVICE_NAME)
        webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(
            WebhookServicer(full.webhooks, full.delivery.policy.circuit_threshold),
            services_server,
        )
        services_served.append(WEBHOOK_SERVICE_NAME)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services_server)
    if settings.reflection:
        reflection.enable_server_reflection(
            [*services_served, health.SERVICE_NAME, reflection.SERVICE_NAME], services_server
        )
    with startup_step("--listen", settings.listen):
        bound, reloader = _bind(server, settings)
    await server.start()
    running = RunningServer(
        server, bound, tracking, health_servicer, reloader, dispatch=dispatch, services=full
    )
    await running.first_health()
    if settings.admin_listen:
        try:
            with startup_step("--admin-listen", settings.admin_listen):
                running.admin = await start_admin(
                    settings.admin_listen,
                    health_servicer,
                    metrics or ServiceMetrics(),
                    reuse_port=worker_index() is not None,
                )
        except BaseException:
            await server.stop(0)
            raise
    if settings.http_listen:
        try:
            with startup_step("--http-listen", settings.http_listen):
                running.http = await _start_http(settings, services, auth, metrics)
        except BaseException:
            await server.stop(0)
            if running.admin is not None:
                await running.admin.stop()
            raise
    running.start_monitoring()
    return running


async def _start_http(
    settings: ServerSettings,
    services: Services | DriverTracking,
    auth: AuthPolicy | None,
    metrics: ServiceMetrics | None,
) -> HttpServer:
    """The HTTP front door over the same services, rules, tokens and metrics."""
    if isinstance(services, Services):
        backends = Backends(
            services.tracking, services.dispatch, services.zones, services.events,
            services.history,
        )  # fmt: skip
    else:
        backends = Backends(services)
    options = HttpOptions(
        max_body_bytes=settings.http_max_body_bytes,
        heartbeat_s=settings.http_heartbeat,
        cors_origins=settings.http_cors_origin,
        map_tiles=settings.map_tiles,
        tls=not settings.insecure,
        stale_after_s=settings.stale_after,
    )
    door = FrontDoor(backends, auth, options, metrics)
    host, port = parse_listen(settings.http_listen)
    tls = None
    if not settings.insecure:
        assert settings.tls_cert is not None
        assert settings.tls_key is not None
        tls = (settings.tls_cert, settings.tls_key)
    return await start_http(door, host, port, tls=tls, reuse_port=worker_index() is not None)


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
        raise ConfigError(f"{TLS_SETTINGS}: {exc}") from exc
    return server.add_secure_port(address, credentials), reloader


async def serve(settings: ServerSettings) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; a second signal exits at once.
    Return the exit code: 0, or EXIT_FATAL after a background task the service needs failed."""
    preflight(settings, shared_ports=worker_index() is not None)
    _auth_policy(settings)  # an unusable token key fails before the store is opened
    metrics = ServiceMetrics()
    metrics.watch_process(asyncio.get_running_loop())
    with startup_step(*store_setting(settings)):
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
    stopped = loop.create_task(stop.wait())
    fatal = loop.create_task(running.fatal.wait())
    await asyncio.wait((stopped, fatal), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    fatal.cancel()
    await running.stop(settings.shutdown_grace)
    if running.fatal.is_set():
        log.critical("driver-service stopped after a fatal failure: exiting %d", EXIT_FATAL)
        return EXIT_FATAL
    log.info("driver-service stopped")
    return 0
