"""Scale-out end to end: replicas and workers as real processes sharing a private PostgreSQL
and a private Redis, and the faults an operator will meet — a replica killed, Redis restarted,
PostgreSQL stopped — each with nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service.client import Backoff, DriverClient, Unavailable
from driver_service.domain import Location
from tests.helpers.ports import free_port
from tests.helpers.postgres import PostgresServer, create_database
from tests.helpers.redis import RedisServer
from tests.helpers.server_process import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 3600) * NANOS
SERVING = health_pb2.HealthCheckResponse.SERVING
PICK_FIRST = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"pick_first": {}}]}))


def fix(driver_id: str, i: int) -> Location:
    return Location(driver_id, 40.0 + i / 10_000, -3.0, 5.0, 90.0, BASE_NS + i * NANOS)


def start_replica(
    launcher: Launcher, tmp_path: Path, store: str, bus: str, *extra: str
) -> ServerProcess:
    data_dir = tmp_path / f"replica-{len(launcher.started)}"
    data_dir.mkdir()
    return launcher.start(data_dir, "--store", store, "--bus", bus, *extra)


async def health_of(admin: str) -> int:
    async with grpc.aio.insecure_channel(admin) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="driver.v1.DriverService"), timeout=2
        )
    return int(reply.status)


async def eventually(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            if await predicate():  # type: ignore[operator]
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def start_two_workers(
    launcher: Launcher, tmp_path: Path, target: str, postgres_db: str, redis: RedisServer
) -> ServerProcess:
    """`serve --workers 2` on `target`, returned once both workers listen."""
    server = launcher.spawn(
        ["--insecure", "--listen", target, "--workers", "2", "--store", postgres_db,
         "--bus", redis.url, "--data-dir", str(tmp_path), "--log-format", "json"],
        target,
    ).wait_ready()  # fmt: skip

    async def both_listening() -> bool:
        return server.stderr.count("driver-service listening") == 2

    await eventually(both_listening, 20, "both workers listening")
    return server


@contextlib.asynccontextmanager
async def watching(
    client: DriverClient, driver_id: str
) -> AsyncIterator[asyncio.Queue[tuple[float, Location]]]:
    received: asyncio.Queue[tuple[float, Location]] = asyncio.Queue()

    async def watch() -> None:
        async for location in client.watch(driver_id):
            received.put_nowait((time.perf_counter(), location))

    task = asyncio.create_task(watch())
    try:
        yield received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_fix(received: asyncio.Queue[tuple[float, Location]], ns: int) -> float:
    """When the watcher received the fix at `ns` (skipping older ones)."""
    while True:
        at, location = await asyncio.wait_for(received.get(), 10)
        if location.recorded_at_ns == ns:
            return at
        assert location.recorded_at_ns < ns, "a watcher saw a fix that was never sent"


@pytest.fixture
async def postgres_db(postgres_server: PostgresServer) -> str:
    postgres_server.start()
    return await create_database(postgres_server)


async def test_three_replicas_share_state_and_live_locations(
    launcher: Launcher, tmp_path: Path, postgres_db: str, private_redis: RedisServer
) -> None:
    a, b, c = (start_replica(launcher, tmp_path, postgres_db, private_redis.url) for _ in range(3))
    async with (
        DriverClient(a.target) as via_a,
        DriverClient(b.target) as via_b,
        DriverClient(c.target) as via_c,
        watching(via_c, "fleet-1") as received,
    ):
        latencies_ms = []
        behind = 0  # reads on B that came before its cache had the upload
        for i in range(41):
            sent = time.perf_counter()
            report = await via_a.upload([fix("fleet-1", i)])
            assert report.persisted_count == 1
            # Straight after the acknowledgement: B's read cache follows by pub/sub, within
            # --read-cache-staleness (1 s) at most, usually before the call arrives.
            deadline = time.monotonic() + 1.0 + 0.5
            want = pytest.approx(fix("fleet-1", i).latitude)
            while (await via_b.get_driver("fleet-1")).latitude != want:
                assert time.monotonic() < deadline, "B's GetDriver lagged past the bound"
                behind += 1
                await asyncio.sleep(0.002)
            got = await next_fix(received, fix("fleet-1", i).recorded_at_ns)
            if i:  # the first one also waited for the watcher's subscription to be set up
                latencies_ms.append((got - sent) * 1000)
    p50 = statistics.median(latencies_ms)
    p99 = statistics.quantiles(latencies_ms, n=100)[98]
    print(f"\nupload on A -> watcher on C: p50 {p50:.2f} ms, p99 {p99:.2f} ms; B behind {behind}")
    assert p99 < 500, f"p99 {p99:.1f} ms"


async def test_two_workers_both_serve_and_see_each_other(
    launcher: Launcher, tmp_path: Path, postgres_db: str, private_redis: RedisServer
) -> None:
    target = f"127.0.0.1:{free_port()}"
    server = await start_two_workers(launcher, tmp_path, target, postgres_db, private_redis)
    # Separate connections are spread over the workers by the kernel (SO_REUSEPORT).
    watchers = [DriverClient(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)]  # fmt: skip
    uploaders = [DriverClient(target, options=[("grpc.use_local_subchannel_pool", 1)])
                 for _ in range(8)]  # fmt: skip
    try:
        async with contextlib.AsyncExitStack() as stack:
            queues = [await stack.enter_async_context(watching(w, "shared-1")) for w in watchers]
            await uploaders[0].upload([fix("shared-1", 0)])
            for queue in queues:  # every watcher is subscribed once it has the first fix
                await next_fix(queue, fix("shared-1", 0).recorded_at_ns)
            for i, uploader in enumerate(uploaders, start=1):
                await uploader.upload([fix("shared-1", i)])
                for queue in queues:
                    await next_fix(queue, fix("shared-1", i).recorded_at_ns)
    finally:
        for client in [*watchers, *uploaders]:
            await client.close()
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 20) == 0, server.stderr
    served: dict[str, set[int]] = {}
    for line in server.stderr.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("logger") == "driver_service.rpc" and "worker" in record:
                served.setdefault(record["method"].rsplit("/", 1)[1], set()).add(record["worker"])
    assert set().union(*served.values()) == {0, 1}, f"both workers take calls: {served}"
    # Every watcher got every upload; at least one of them was accepted by another worker.
    crossed = [(w, u) for w in served["StreamLocation"] for u in served["UploadLocations"]]
    assert any(w != u for w, u in crossed), served


async def test_watch_moves_to_another_replica_when_one_is_killed(
    launcher: Launcher, tmp_path: Path, postgres_db: str, private_redis: RedisServer
) -> None:
    a = start_replica(launcher, tmp_path, postgres_db, private_redis.url)
    b = start_replica(launcher, tmp_path, postgres_db, private_redis.url)
    # pick_first: the watch starts on A, the first address, and moves to B when A dies.
    async with (
        DriverClient(f"ipv4:{a.target},{b.target}", options=[PICK_FIRST]) as watcher,
        DriverClient(b.target) as via_b,
        watching(watcher, "moving-1") as received,
    ):
        await via_b.upload([fix("moving-1", 0)])
        await next_fix(received, fix("moving-1", 0).recorded_at_ns)
        a.kill()
        killed_at = time.perf_counter()
        for i in range(1, 60):  # keep the driver moving while the watcher reconnects
            await via_b.upload([fix("moving-1", i)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(next_fix(received, fix("moving-1", i).recorded_at_ns), 0.2)
                break
        else:
            raise AssertionError("the watcher did not resume on replica B")
    print(f"\nwatch resumed on B {time.perf_counter() - killed_at:.2f} s after A was killed")
    assert time.perf_counter() - killed_at < 10


async def test_redis_restart_is_survived_without_a_restart(
    launcher: Launcher, tmp_path: Path, postgres_db: str, private_redis: RedisServer
) -> None:
    admin = f"127.0.0.1:{free_port()}"
    server = start_replica(
        launcher, tmp_path, postgres_db, private_redis.url, "--admin-listen", admin
    )
    async with DriverClient(server.target) as client, watching(client, "r-1") as received:
        await client.upload([fix("r-1", 0)])
        await next_fix(received, fix("r-1", 0).recorded_at_ns)
        private_redis.kill()

        async def not_serving() -> bool:
            return await health_of(admin) != SERVING

        await eventually(not_serving, 10, "NOT_SERVING while Redis is down")
        report = await client.upload([fix("r-1", 1)])  # durable store still takes updates
        assert report.persisted_count == 1
        private_redis.start()

        async def serving() -> bool:
            return await health_of(admin) == SERVING

        await eventually(serving, 15, "SERVING again once Redis is back")
        await client.upload([fix("r-1", 2)])
        await next_fix(received, fix("r-1", 2).recorded_at_ns)  # the same watcher resumes
        assert (await client.get_driver("r-1")).latitude == pytest.approx(fix("r-1", 2).latitude)


async def test_postgres_stopped_refuses_uploads_and_recovers(
    launcher: Launcher, tmp_path: Path, own_postgres_server: PostgresServer,
    private_redis: RedisServer,
) -> None:  # fmt: skip
    store = await create_database(own_postgres_server)
    admin = f"127.0.0.1:{free_port()}"
    server = start_replica(launcher, tmp_path, store, private_redis.url, "--admin-listen", admin)
    async with DriverClient(server.target, timeout=10) as client:
        await client.upload([fix("pg-1", 0)])
        own_postgres_server.stop()
        with pytest.raises(Unavailable):
            await client.upload([fix("pg-1", 1)], backoff=Backoff(max_attempts=1))
        # Reads still come from live state in Redis, and never show the refused update.
        snapshot = await client.get_driver("pg-1")
        assert snapshot.latitude == pytest.approx(fix("pg-1", 0).latitude)

        async def not_serving() -> bool:
            return await health_of(admin) != SERVING

        await eventually(not_serving, 10, "NOT_SERVING while PostgreSQL is down")
        own_postgres_server.start()

        async def serving() -> bool:
            return await health_of(admin) == SERVING

        await eventually(serving, 20, "SERVING again once PostgreSQL is back")
        report = await client.upload([fix("pg-1", 1)])
        assert report.persisted_count == 1
        assert (await client.get_driver("pg-1")).latitude == pytest.approx(fix("pg-1", 1).latitude)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


async def test_workers_stop_when_their_supervisor_is_killed(
    launcher: Launcher, tmp_path: Path, postgres_db: str, private_redis: RedisServer
) -> None:
    """A supervisor SIGKILLed (OOM, kill -9) must not leave its workers serving its port
    forever, beside the next supervisor's workers: they notice and stop gracefully."""
    target = f"127.0.0.1:{free_port()}"
    server = await start_two_workers(launcher, tmp_path, target, postgres_db, private_redis)
    workers = _children(server.proc.pid)
    assert len(workers) == 2, workers
    server.kill()

    async def workers_gone() -> bool:
        return not any(_alive(pid) for pid in workers)

    await eventually(workers_gone, 15, "orphaned workers to stop")
    assert server.stderr.count("supervisor (pid") == 2, server.stderr[-2000:]
    with pytest.raises(grpc.aio.AioRpcError):
        async with grpc.aio.insecure_channel(target) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
