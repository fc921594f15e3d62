"""The fault-injection tier's server: `driver-service serve` as a subprocess on SQLite, or on
a private PostgreSQL + Redis (the chaos tier's fixtures share one by the storms of a module),
and the checks every storm must leave true (`ChaosServer.assert_unharmed`).

Leaks are measured from outside, on the admin port's /metrics: the live asyncio tasks of the
server's loop (`driver_service_event_loop_tasks`) and its RSS (`process_resident_memory_bytes`),
against a baseline taken after a warm-up that ran every storm once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import storm
from tests.helpers.ports import free_port
from tests.helpers.server_process import Launcher, ServerProcess
from tests.helpers.sqlite_history import committed_history
from tests.helpers.storm import Clients, Ledger

SERVICE = "driver.v1.DriverService"
SERVING = health_pb2.HealthCheckResponse.SERVING
GRACE_S = 5
#: After a storm, tasks and RSS get this long to come back to the baseline.
SETTLE_S = 5.0
#: Tasks that may legitimately be alive at any one scrape beyond the baseline: the health
#: monitor's ping, a dispatch sweep, a Redis reconnect. A leak of one task per call shows as
#: tens to hundreds (a storm makes hundreds of calls of each kind).
TASK_SLACK = 5
#: RSS above the baseline (taken after every storm ran once, so the allocator's pools are at
#: their high-water mark). What a storm allocates is freed into those pools, so a later storm
#: reuses it; ~1 KiB kept per call would be ~1-3 MiB per storm and add up over the storms of
#: a module. 24 MiB is about 3x the spread measured between storms, well below that sum.
RSS_SLACK_BYTES = 24 << 20
#: The upload after a storm must be acknowledged within this (the service's promise).
HEALTHY_UPLOAD_S = 1.0


@dataclass(frozen=True)
class Footprint:
    """What the server holds while idle: its loop's tasks and its resident memory."""

    tasks: int
    rss_bytes: int

    def __str__(self) -> str:
        return f"{self.tasks} tasks, {self.rss_bytes / (1 << 20):.1f} MiB RSS"


async def http_get(address: str, path: str) -> tuple[int, bytes]:
    """A bare HTTP/1.1 GET (the admin port closes the connection after one answer)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def health_status(target: str, timeout_s: float = 2.0) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout_s
        )
    return int(reply.status)


@dataclass
class ChaosServer:
    """A server subprocess under storms, what it acknowledged, and what it held at rest."""

    process: ServerProcess
    admin: str
    backend: str
    read_history: Callable[[], Awaitable[set[tuple[str, int]]]]
    ledger: Ledger = field(default_factory=Ledger)
    baseline: Footprint | None = None

    @property
    def port(self) -> int:
        return int(self.process.target.rsplit(":", 1)[1])

    @contextlib.asynccontextmanager
    async def clients(self) -> AsyncIterator[Clients]:
        async with grpc.aio.insecure_channel(self.process.target) as channel:
            yield Clients.on(channel)

    async def metrics(self) -> dict[str, float]:
        """/metrics as {series with labels: value}."""
        status, body = await http_get(self.admin, "/metrics")
        assert status == 200, body[:200]
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    async def footprint(self) -> tuple[Footprint, list[str]]:
        """Tasks and RSS now, and the streams, sessions and watchers still open."""
        values = await self.metrics()
        still_open = [
            f"{name}={value:g}"
            for name, value in values.items()
            if value
            and name.startswith(
                (
                    "grpc_server_open_streams",
                    "driver_service_sessions_open",
                    "driver_service_watchers",
                )
            )
        ]
        tasks = int(values["driver_service_event_loop_tasks"])
        return Footprint(tasks, int(values["process_resident_memory_bytes"])), still_open

    async def warm_up(self) -> None:
        """Run every storm once, then take the baseline: the allocator's pools, gRPC's and the
        store's caches are as large as storms make them."""
        if self.baseline is not None:
            return
        async with self.clients() as c:
            for one in (storm.upload, storm.watch_while_uploading, storm.session, storm.offer):
                await storm.run_storm("warm-up", 2, 30, lambda n, one=one: one(c, self.ledger, n))
        await asyncio.sleep(storm.OFFER_TTL_S)  # offers of the warm-up end
        deadline = time.monotonic() + SETTLE_S
        while True:
            now, still_open = await self.footprint()
            if not still_open or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert not still_open, f"open after the warm-up: {still_open}"
        self.baseline = now
        print(f"\n{self.backend} baseline after warm-up: {now}")

    async def healthy_upload(self) -> None:
        """A normal upload on a fresh connection is acknowledged within HEALTHY_UPLOAD_S."""
        fixes = self.ledger.fixes(0, 5, prefix="healthy")
        async with self.clients() as c:
            started = time.monotonic()
            summary = await c.driver.UploadLocations(iter(fixes), timeout=HEALTHY_UPLOAD_S)
        self.ledger.acknowledge(fixes, summary.persisted_count)
        assert time.monotonic() - started < HEALTHY_UPLOAD_S

    async def assert_unharmed(self) -> None:
        """What every storm must leave true: uploads acknowledged at once, health SERVING on
        both ports, nothing acknowledged missing from history, and tasks and RSS back to the
        baseline with no stream, session or watcher left open."""
        assert self.process.proc.poll() is None, f"server exited:\n{self.process.stderr[-3000:]}"
        await self.healthy_upload()
        assert await health_status(self.process.target) == SERVING
        assert await health_status(self.admin) == SERVING
        missing = self.ledger.acked - await self.read_history()
        assert not missing, (
            f"{len(missing)} acknowledged updates not in history: {sorted(missing)[:5]}"
        )
        assert self.baseline is not None
        limit = Footprint(
            self.baseline.tasks + TASK_SLACK, self.baseline.rss_bytes + RSS_SLACK_BYTES
        )
        deadline = time.monotonic() + SETTLE_S
        while True:
            now, still_open = await self.footprint()
            back = now.tasks <= limit.tasks and now.rss_bytes <= limit.rss_bytes
            if (back and not still_open) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        print(f"\nafter the storm: {now} (baseline {self.baseline})")
        assert not still_open, f"still open {SETTLE_S} s after the storm: {still_open}"
        assert back, f"not back to baseline ({self.baseline}) + slack: {now}"


def sqlite_history(db: Path) -> Callable[[], Awaitable[set[tuple[str, int]]]]:
    async def read() -> set[tuple[str, int]]:
        return set(await asyncio.to_thread(committed_history, db))

    return read


def postgres_history(url: str) -> Callable[[], Awaitable[set[tuple[str, int]]]]:
    async def read() -> set[tuple[str, int]]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            rows = await connection.fetch("SELECT driver_id, recorded_at_ns FROM location_history")
        finally:
            await connection.close()
        return {(row[0], row[1]) for row in rows}

    return read


def start_chaos_server(
    launcher: Launcher, data_dir: Path, backend: str, store: tuple[str, str] | None
) -> ChaosServer:
    """`serve` on free ports; `store` is (PostgreSQL URL, Redis URL), or None for SQLite."""
    admin = f"127.0.0.1:{free_port()}"
    extra = ["--admin-listen", admin, "--shutdown-grace", str(GRACE_S), "--access-log", "errors"]
    if store is None:
        history = sqlite_history(data_dir / "driver-service.sqlite3")
    else:
        extra += ["--store", store[0], "--bus", store[1]]
        history = postgres_history(store[0])
    return ChaosServer(launcher.start(data_dir, *extra), admin, backend, history)
