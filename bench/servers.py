"""Servers under test, one per subprocess: `python -m bench.servers KIND --port P ...`.

full     exactly what `driver-service serve --insecure` runs (server.start_server with
         metrics, logging at INFO as JSON, uvloop), plus nothing

Every kind settles its heap before serving, as `serve` does (driver_service.server.heap), so
that between kinds only the code differs: left to the default collector, the bare floor's
10,000 prebuilt responses cost it ~1 µs per call in old-generation collections.
chain    the same service and options with a chosen subset of the interceptor chain,
         optionally with server-authenticated TLS, and the batch and health services,
         registered in one method table as `serve` does (--registered: grpc.aio's way)
bare     the floor: a grpc.aio servicer that returns a prebuilt response from a dict, reads
         an UploadLocations stream without storing it, and hands each update it reads to the
         driver's StreamLocation watchers as the message it received (the fan-out floor)
fastapi  GET /v1/drivers/{id} on FastAPI + uvicorn over the same DriverTracking
durable  the durable ingest floor (bench/durable_floor.py): UploadLocations stored with the
         least work, the rows ours writes, in SQLite (or with --store, PostgreSQL)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from bench.common import DRIVERS, driver_id
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.domain import Location
from driver_service.server.config import ServerSettings
from driver_service.server.heap import settle_heap
from driver_service.wire import driver_to_pb

INTERCEPTORS = ("pipeline", "request_id", "logging", "auth", "metrics")
BENCH_SECRET = b"bench-secret-not-for-production-32-bytes"


def preload_locations(now_ns: int | None = None) -> list[Location]:
    """10,000 drivers spread over Berlin, each with one location a minute old."""
    at = (now_ns or time.time_ns()) - 60_000_000_000
    return [
        Location(driver_id(n), 52.3 + (n % 100) / 500, 13.2 + (n // 100) / 500, 8.5, 90.0, at)
        for n in range(DRIVERS)
    ]


async def preload(data_dir: Path) -> None:
    """Write the drivers into the SQLite store the server will open."""
    from driver_service.adapters.sqlite.repository import SqliteRepository

    settings = ServerSettings(data_dir=data_dir)
    repository = await SqliteRepository.open(settings.sqlite_path())
    try:
        await repository.record_locations(preload_locations())
    finally:
        await repository.close()


def settings_for(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        listen=f"127.0.0.1:{args.port}",
        admin_listen="127.0.0.1:0" if args.kind == "full" else "",
        data_dir=Path(args.data_dir),
        store=args.store or None,
        bus=args.bus,
        read_cache_size=args.read_cache_size,
        insecure=True,
        rate_limit=args.rate_limit,
        log_level=args.log_level,
        log_format="json",
        keepalive_timeout=args.keepalive_timeout,
        access_log=args.access_log,
    )


async def until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def run_full(args: argparse.Namespace) -> None:
    from driver_service.observability.metrics.catalogue import ServiceMetrics
    from driver_service.server.composition import build_tracking
    from driver_service.server.running import start_server

    settings = settings_for(args)
    metrics = ServiceMetrics()
    tracking = await build_tracking(settings, metrics)
    running = await start_server(settings, tracking, metrics)
    settle_heap()
    await until_terminated()
    await running.stop(0)


def chain_pipeline(names: list[str], metrics: Any) -> Any:
    """The production CallPipeline with only the concerns in `names` (recovery and decoding
    are always part of it: "pipeline" alone is just those); no names, no interceptor."""
    from driver_service.api.rules import RULES
    from driver_service.interceptors import AccessLog, AuthPolicy, CallPipeline
    from driver_service.security import TokenValidator

    unknown = set(names) - set(INTERCEPTORS)
    if unknown:
        raise SystemExit(f"unknown interceptors: {sorted(unknown)}")
    if not names:
        return None
    auth = AuthPolicy(TokenValidator.from_secret(BENCH_SECRET), rules=RULES)
    return CallPipeline(
        auth=auth if "auth" in names else None,
        access_log=AccessLog() if "logging" in names else None,
        metrics=metrics if "metrics" in names else None,
        request_ids="request_id" in names,
    )


async def run_chain(args: argparse.Namespace) -> None:
    from grpc_health.v1 import _async as health_aio
    from grpc_health.v1 import health_pb2_grpc

    from driver_service.api import DriverServicer
    from driver_service.api.batch_servicer import add_batch_service
    from driver_service.api.servicer import add_driver_service
    from driver_service.interceptors.registration import one_table
    from driver_service.observability.metrics.catalogue import ServiceMetrics
    from driver_service.server.composition import build_tracking
    from driver_service.server.running import server_options

    settings = settings_for(args)
    metrics = ServiceMetrics()
    tracking = await build_tracking(settings, metrics)
    names = [n for n in args.interceptors.split(",") if n]
    server = grpc.aio.server(options=server_options(settings))
    pipeline = chain_pipeline(names, metrics)
    # As server/running.py does: every method in one table, wrapped in the pipeline if any;
    # --registered: no pipeline, each method registered by name with grpc.aio (its default).
    if args.registered:
        services = server
    elif pipeline is None:
        services = one_table(server)
    else:
        services = pipeline.around(server)
    add_driver_service(services, DriverServicer(tracking))  # as server/running.py does
    add_batch_service(services, tracking)
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), services)
    if args.tls:
        tls = Path(args.tls)
        creds = grpc.ssl_server_credentials(
            [((tls / "server.key").read_bytes(), (tls / "server.crt").read_bytes())]
        )
        server.add_secure_port(settings.listen, creds)
    else:
        server.add_insecure_port(settings.listen)
    await server.start()
    settle_heap()
    await until_terminated()
    await server.stop(0)
    await tracking.close()


class Watched:
    """One watched driver of the fan-out floor: its latest update, a count of updates, and
    the futures of the watchers idle until the next one. A watcher that was busy writing
    when an update came sees the count moved and sends the latest at once (slow watchers
    coalesce to the newest, as ours do)."""

    __slots__ = ("latest", "seq", "waiters", "watchers")

    def __init__(self) -> None:
        self.latest: pb.LocationUpdate | None = None
        self.seq = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.watchers = 0


class BareServicer(pb_grpc.DriverServiceServicer):
    """The floor: no interceptors, no service layer, a dict of prebuilt responses; live
    updates go from the upload to the watchers as the very message read off the wire."""

    def __init__(self) -> None:
        from driver_service.domain import Driver, Status

        self.table = {
            loc.driver_id: driver_to_pb(
                Driver(loc.driver_id, Status.AVAILABLE, loc, loc.recorded_at_ns)
            )
            for loc in preload_locations()
        }
        self.watched: dict[str, Watched] = {}

    async def GetDriver(self, request: pb.GetDriverRequest, context: Any) -> pb.GetDriverResponse:  # noqa: N802
        return self.table[request.driver_id]

    async def StreamLocation(  # noqa: N802
        self, request: pb.StreamLocationRequest, context: Any
    ) -> AsyncIterator[pb.LocationUpdate]:
        """The fan-out floor: per delivery one future and one grpc.aio write of a message
        built once for every watcher. (Not checked: the driver id; nothing is read back.)"""
        driver_id = request.driver_id
        watched = self.watched.get(driver_id)
        if watched is None:
            watched = self.watched[driver_id] = Watched()
        watched.watchers += 1
        create_future = asyncio.get_running_loop().create_future
        seen = 0
        try:
            while True:
                if watched.seq == seen:
                    waiter = create_future()
                    watched.waiters.append(waiter)
                    await waiter
                seen = watched.seq
                assert watched.latest is not None
                yield watched.latest
        finally:
            watched.watchers -= 1
            if not watched.watchers:
                del self.watched[driver_id]

    async def UploadLocations(  # noqa: N802
        self, request_iterator: Any, context: Any
    ) -> pb.UploadSummary:
        """The ingest floor: read and count every message, store nothing; a message for a
        watched driver wakes its watchers (a dict that is empty unless someone watches)."""
        received = 0
        watched = self.watched
        async for msg in request_iterator:
            received += 1
            if watched and (topic := watched.get(msg.driver_id)) is not None:
                topic.latest = msg
                topic.seq += 1
                waiters, topic.waiters = topic.waiters, []
                for waiter in waiters:
                    if not waiter.done():  # a cancelled watcher's future stays until now
                        waiter.set_result(None)
        return pb.UploadSummary(received_count=received, persisted_count=received)


async def run_bare(args: argparse.Namespace) -> None:
    options = None
    if args.server_options:  # the floor with our limits and keepalive (grpc core's share)
        from driver_service.server.running import server_options

        options = server_options(settings_for(args))
    server = grpc.aio.server(options=options)
    servicer = BareServicer()
    pb_grpc.add_DriverServiceServicer_to_server(servicer, server)
    if args.raw:  # GetDriver answers prebuilt bytes, sent as they are (no serializer)
        encoded = {key: reply.SerializeToString() for key, reply in servicer.table.items()}

        async def get_driver_raw(request: pb.GetDriverRequest, context: Any) -> bytes:
            return encoded[request.driver_id]

        handler = grpc.unary_unary_rpc_method_handler(
            get_driver_raw, request_deserializer=pb.GetDriverRequest.FromString
        )
        # Registered methods are looked up before generic handlers: replace it there.
        server.add_registered_method_handlers(  # type: ignore[attr-defined]
            "driver.v1.DriverService", {"GetDriver": handler}
        )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    settle_heap()
    await until_terminated()
    await server.stop(0)


def run_fastapi(args: argparse.Namespace) -> None:
    import uvicorn
    from fastapi import FastAPI, HTTPException

    from driver_service.domain import DriverNotFound, InvalidInput
    from driver_service.server.composition import build_tracking

    app = FastAPI()
    state: dict[str, Any] = {}

    @app.get("/v1/drivers/{driver_id}")
    async def get_driver(driver_id: str) -> dict[str, Any]:
        try:
            driver = await state["tracking"].get_driver(driver_id)
        except DriverNotFound:
            raise HTTPException(404, "driver not found") from None
        except InvalidInput as exc:
            raise HTTPException(400, str(exc)) from None
        loc = driver.location
        seconds, nanos = divmod(driver.last_seen_at_ns, 1_000_000_000)
        return {
            "driver_id": driver.driver_id,
            "status": driver.status.value,
            "latitude": loc.latitude if loc else 0.0,
            "longitude": loc.longitude if loc else 0.0,
            "last_seen_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{nanos:09d}Z",
        }

    async def main() -> None:
        state["tracking"] = await build_tracking(settings_for(args))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=args.port,
            loop="none",
            access_log=False,
            log_level="warning",
        )
        settle_heap()
        await uvicorn.Server(config).serve()

    from driver_service.cli.serve_command import run_loop

    run_loop(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["full", "chain", "bare", "fastapi", "durable"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", default=".")
    parser.add_argument("--interceptors", default=",".join(INTERCEPTORS))
    parser.add_argument("--store", default="", help="store URL (default: SQLite in data dir)")
    parser.add_argument("--bus", default="memory", help="memory or a redis:// URL")
    parser.add_argument("--read-cache-size", type=int, default=10_000, help="with Redis")
    parser.add_argument("--tls", default="", help="directory with server.crt / server.key")
    parser.add_argument("--rate-limit", type=float, default=0.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keepalive-timeout", type=float, default=1.0)
    parser.add_argument("--access-log", default="all", choices=["all", "errors", "off"])
    parser.add_argument(
        "--server-options", action="store_true", help="bare: with the production server options"
    )
    parser.add_argument("--raw", action="store_true", help="bare: GetDriver answers bytes")
    parser.add_argument(
        "--registered",
        action="store_true",
        help="chain without interceptors: methods registered by name with grpc.aio",
    )
    args = parser.parse_args()
    if args.kind == "fastapi":
        run_fastapi(args)
        return
    from driver_service.cli.serve_command import run_loop
    from driver_service.observability.logs import configure_logging

    configure_logging(args.log_level, "json")
    from bench.durable_floor import run_durable

    runs = {"full": run_full, "chain": run_chain, "bare": run_bare, "durable": run_durable}
    run_loop(runs[args.kind](args))


if __name__ == "__main__":
    main()
