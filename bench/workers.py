"""5. Workers: GetDriver and UploadLocations with `serve --workers 2` against one worker.

Workers share the scale-out stores (one SQLite file cannot be shared by two processes), so
both runs use a private PostgreSQL and a private Redis started here: GetDriver reads each
driver's live state from Redis, UploadLocations commits to PostgreSQL.

A scaling figure needs a core per worker, a core for h2load and one for PostgreSQL and
Redis: 4 cores for 2 workers. With fewer the part is skipped, since every process would share
the same cores and the ratio would measure that contention, not how the workers scale;
`--workers-anyway` measures regardless (to check the part runs) and labels the result so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, Server, free_port, h2load, pinned, wait_for_port
from bench.ingest import one_point
from bench.servers import preload_locations
from bench.unary import GET_DRIVER, GRPC_HEADERS, get_driver_body

CORES_NEEDED = 4
WORKER_COUNTS = (1, 2)
CLIENTS = 100
INGEST_STREAMS = 50


@dataclass(frozen=True)
class Placement:
    """Which cores the workers, the load generator and the stores run on."""

    workers: list[int]
    client: int
    stores: int
    contended: bool


def machine_cores() -> list[int]:
    """Every core of the machine (the bench process itself is pinned to the client core)."""
    return list(range(os.cpu_count() or 1))


def placement(max_workers: int) -> Placement | None:
    """Separate cores for workers, client and stores, or None if this machine has too few."""
    cores = machine_cores()
    if len(cores) < max_workers + 2:
        return None
    return Placement(cores[:max_workers], cores[max_workers], cores[max_workers + 1], False)


def contended_placement(max_workers: int) -> Placement:
    """Everything on the cores there are (only to check that the part runs)."""
    cores = machine_cores()
    workers = [cores[i % len(cores)] for i in range(max_workers)]
    return Placement(workers, cores[-1], cores[-1], True)


def _pin(pid: int, core: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {core})


@contextlib.contextmanager
def scale_out_stores(core: int) -> Iterator[tuple[str, str]]:
    """A private PostgreSQL (a fresh database) and Redis, pinned to `core`."""
    from tests.helpers.postgres import PostgresServer, create_database
    from tests.helpers.redis import RedisServer

    pg = PostgresServer.create()
    redis = RedisServer.create()
    try:
        pg.start()
        redis.start()
        for proc in (pg.process, redis.process):
            if proc is not None:
                _pin(proc.pid, core)  # backends forked later inherit it
        yield asyncio.run(create_database(pg)), redis.url
    finally:
        redis.destroy()
        pg.destroy()


async def _preload(store: str) -> None:
    from driver_service.adapters.postgres.repository import PostgresRepository

    repository = await PostgresRepository.open(store)
    try:
        await repository.record_locations(preload_locations())
    finally:
        await repository.close()


@contextlib.contextmanager
def serve(
    workers: int, cores: list[int], store: str, bus: str, workdir: Path
) -> Iterator[tuple[int, int]]:
    """`driver-service serve --workers N` on the given cores; yields (port, supervisor pid)."""
    port = free_port()
    data = workdir / f"workers-{workers}-{port}"
    data.mkdir(parents=True)
    argv = [PYTHON, "-m", "driver_service", "serve", "--insecure", "--workers", str(workers)]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", "", "--data-dir", str(data)]
    argv += ["--store", store, "--bus", bus, "--log-level", "WARNING"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVER_SERVICE_")}
    core_list = ",".join(str(c) for c in cores[:workers])
    log_path = workdir / f"workers-{workers}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            pinned(core_list, argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    running = Server(proc, port, log_path)
    try:
        wait_for_port(port, proc, timeout_s=60)
        yield port, proc.pid
    finally:
        running.stop()  # the supervisor stops its workers on SIGTERM


def run(
    workdir: Path,
    *,
    repeats: int = 3,
    duration_s: float = 3.0,
    total_updates: int = 100_000,
    anyway: bool = False,
) -> dict[str, Any]:
    where = placement(max(WORKER_COUNTS))
    if where is None:
        if not anyway:
            reason = (
                f"needs {CORES_NEEDED} cores (a core per worker, one for h2load, one for "
                f"PostgreSQL and Redis); this machine has {len(machine_cores())}, where "
                "the ratio would measure contention, not scaling. `python -m bench workers "
                "--workers-anyway` runs it regardless."
            )
            print(f"  skipped: {reason}")
            return {"skipped": reason}
        where = contended_placement(max(WORKER_COUNTS))
    body = get_driver_body()
    out: dict[str, Any] = {"placement": where.__dict__, "cases": {}}
    with scale_out_stores(where.stores) as (store, bus):
        asyncio.run(_preload(store))
        for workers in WORKER_COUNTS:
            with serve(workers, where.workers, store, bus, workdir) as (port, pid):
                url = f"http://127.0.0.1:{port}{GET_DRIVER}"
                load = {
                    "clients": CLIENTS,
                    "server_pid": pid,
                    "body": body,
                    "headers": GRPC_HEADERS,
                    "client_core": str(where.client),
                }
                h2load(url, duration_s=1, **load)  # warm-up: back-fills Redis, warms caches
                unary = sorted(
                    h2load(url, duration_s=duration_s, **load).rps for _ in range(repeats)
                )
                ingest = sorted(
                    one_point(
                        port,
                        pid,
                        workdir,
                        store,
                        total=total_updates,
                        streams=INGEST_STREAMS,
                        batched=False,
                        workdir=workdir,
                        client_core=str(where.client),
                    )["updates_per_s"]
                    for _ in range(repeats)
                )
            case = {
                "getdriver_rps": unary[len(unary) // 2],
                "getdriver_rps_range": [unary[0], unary[-1]],
                "upload_updates_per_s": ingest[len(ingest) // 2],
                "upload_updates_per_s_range": [ingest[0], ingest[-1]],
            }
            out["cases"][str(workers)] = case
            print(
                f"  --workers {workers}: GetDriver {case['getdriver_rps']:,.0f} rps, "
                f"UploadLocations ({INGEST_STREAMS} streams) "
                f"{case['upload_updates_per_s']:,.0f} updates/s"
            )
    one, two = out["cases"]["1"], out["cases"]["2"]
    out["getdriver_scaling"] = two["getdriver_rps"] / one["getdriver_rps"]
    out["upload_scaling"] = two["upload_updates_per_s"] / one["upload_updates_per_s"]
    label = " (CONTENDED: not a scaling figure)" if where.contended else ""
    print(
        f"  2 workers / 1: GetDriver x{out['getdriver_scaling']:.2f}, "
        f"UploadLocations x{out['upload_scaling']:.2f}{label}"
    )
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        run(Path(tmp), repeats=1, anyway="--workers-anyway" in sys.argv)
