"""`python -m bench history`: location history on a store of >= 10 million fixes.

The store is built by bulk insert (not through the RPC): 1,000 drivers x 10,000 fixes at
1 Hz, plus one driver-day (86,400 fixes at 1 Hz, drives and stops), all in yesterday (UTC),
so PostgreSQL's daily partition for it is the one the server makes ahead. Then, on each
store, with a real `driver-service serve` subprocess:

- GetTrail of the driver-day over real gRPC, every chunk received (target <= 0.5 s);
- GetTrips of that day (target <= 1 s);
- beside each, a plain SELECT of the same rows on the same store from this process;
- ingestion throughput (the repository's commit path, batches of 500 as group commit makes
  them, as fast as the store takes them) without retention, beside the server's retention
  loop at its cadence (one pass a minute over the minute of fixes that expired, as in the
  steady state of a 1,000-driver fleet at 1 Hz), and beside a 10 M-fix backlog draining at
  the default pace (SQLite: paced DELETE steps; PostgreSQL: the day's partition detached
  and dropped). Target: each within 10 % of without.

The SQLite file is cached between runs (`$DRIVER_SERVICE_BENCH_CACHE`, default
/tmp/driver-service-bench) while its day is still yesterday.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import common

NS = 10**9
DRIVERS = 1_000
FIXES_PER_DRIVER = 10_000
DAY = 86_400
DAY_DRIVER = "day-driver"
INGEST_BATCH = 500
#: Seconds of each ingestion run without retention around the one at the cadence.
BASELINE_S = 30.0
#: The backlog's comparison: this many pairs of segments without and with it.
BACKLOG_SEGMENTS = 6
SEGMENT_S = 5.0


def _yesterday_ns() -> int:
    now = time.time_ns()
    return (now // (DAY * NS) - 1) * DAY * NS


def _day_route(start_ns: int) -> Iterator[tuple[str, int, float, float, float, float]]:
    """86,400 fixes at 1 Hz: 50 minutes driving at ~10 m/s then a 10-minute stop, hourly."""
    lat, lon, heading = 52.52, 13.405, 0.0
    for s in range(DAY):
        minute = s // 60 % 60
        speed = 10.0 if minute < 50 else 0.0
        if speed:
            heading = (heading + 0.5) % 360.0
            d = speed / 6_371_000.0
            lat += math.degrees(d * math.cos(math.radians(heading)))
            lon += math.degrees(d * math.sin(math.radians(heading))) / math.cos(math.radians(lat))
        yield (DAY_DRIVER, start_ns + s * NS, lat, lon, speed, heading)


def _bulk_rows(start_ns: int) -> Iterator[tuple[str, int, float, float, float, float]]:
    """1,000 drivers x 10,000 fixes, in fix-time order (as they arrive)."""
    for t in range(FIXES_PER_DRIVER):
        at = start_ns + t * NS
        for i in range(DRIVERS):
            yield (f"drv-{i:04d}", at, 52.4 + i * 1e-4 + t * 1e-6, 13.3 + t * 1e-6, 8.0, 90.0)


# --- building the stores ---------------------------------------------------------------------
def build_sqlite(directory: Path, day_ns: int) -> tuple[Path, float]:
    """The data directory with the store; (path, seconds spent building; 0 when cached)."""
    path = directory / "driver-service.sqlite3"
    marker = directory / f"built-{day_ns}"
    if marker.exists() and path.exists():
        return path, 0.0
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    t0 = time.monotonic()
    from driver_service.adapters.sqlite.repository import SqliteRepository

    async def migrate() -> None:
        await (await SqliteRepository.open(path)).close()

    common.run_async(migrate())
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-500000")
    con.execute("BEGIN")
    insert = "INSERT INTO location_history VALUES (?, ?, ?, ?, ?, ?)"
    con.executemany(insert, _bulk_rows(day_ns))
    con.executemany(insert, _day_route(day_ns))
    last = day_ns + (DAY - 1) * NS
    con.executemany(
        "INSERT INTO drivers VALUES (?, 'AVAILABLE', 52.5, 13.4, 0, 0, ?, ?)",
        [(f"drv-{i:04d}", last, last) for i in range(DRIVERS)] + [(DAY_DRIVER, last, last)],
    )
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    marker.touch()
    return path, time.monotonic() - t0


async def build_postgres(url: str, day_ns: int) -> float:
    import asyncpg

    from driver_service.adapters.postgres.repository import PostgresRepository

    t0 = time.monotonic()
    repo = await PostgresRepository.open(url)
    await repo.prepare_history(time.time_ns())
    await repo.close()
    con = await asyncpg.connect(url)
    try:
        columns = [
            "driver_id", "recorded_at_ns", "latitude", "longitude", "speed_mps",
            "heading_degrees",
        ]  # fmt: skip
        rows = _bulk_rows(day_ns)
        while True:
            chunk = [r for _, r in zip(range(1_000_000), rows, strict=False)]
            if not chunk:
                break
            await con.copy_records_to_table("location_history", records=chunk, columns=columns)
        await con.copy_records_to_table(
            "location_history", records=list(_day_route(day_ns)), columns=columns
        )
        last = day_ns + (DAY - 1) * NS
        await con.executemany(
            "INSERT INTO drivers (driver_id, status, latitude, longitude, speed_mps,"
            " heading_degrees, location_at_ns, last_seen_at_ns)"
            " VALUES ($1, 'AVAILABLE', 52.5, 13.4, 0, 0, $2, $2)",
            [(f"drv-{i:04d}", last) for i in range(DRIVERS)] + [(DAY_DRIVER, last)],
        )
        await con.execute("ANALYZE")
    finally:
        await con.close()
    return time.monotonic() - t0


# --- measuring -------------------------------------------------------------------------------
@contextlib.contextmanager
def serve(store_args: list[str], workdir: Path) -> Iterator[str]:
    port = common.free_port()
    log = workdir / f"history-server-{port}.log"
    argv = [
        common.PYTHON, "-m", "driver_service", "serve", "--insecure",
        "--listen", f"127.0.0.1:{port}", "--admin-listen", "", "--history-retention", "0",
        "--log-level", "WARNING", *store_args,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            common.pinned(common.SERVER_CORE, argv), cwd=common.ROOT, stdout=out, stderr=out
        )
    server = common.Server(proc, port, log)
    try:
        common.wait_for_port(port, proc, timeout_s=120)
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


async def rpc_times(target: str, day_ns: int, repeats: int) -> dict[str, Any]:
    import grpc

    from driver_service._gen.driver.v1 import history_pb2 as hpb
    from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc

    def ts(ns: int) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        t = Timestamp()
        t.FromNanoseconds(ns)
        return t

    since, until = ts(day_ns), ts(day_ns + DAY * NS)
    trail_s: list[float] = []
    trips_s: list[float] = []
    points = trips = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = hpb_grpc.HistoryServiceStub(channel)
        for _ in range(repeats + 1):  # the first warms the caches; not counted
            t0 = time.perf_counter()
            points = 0
            async for chunk in stub.GetTrail(
                hpb.GetTrailRequest(driver_id=DAY_DRIVER, since=since, until=until), timeout=60
            ):
                points += len(chunk.points)
            trail_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reply = await stub.GetTrips(
                hpb.GetTripsRequest(driver_id=DAY_DRIVER, since=since, until=until), timeout=60
            )
            trips_s.append(time.perf_counter() - t0)
            trips = len(reply.trips)
    return {
        "trail_points": points,
        "trail_s": statistics.median(trail_s[1:]),
        "trail_runs_s": trail_s[1:],
        "trips": trips,
        "trips_s": statistics.median(trips_s[1:]),
        "trips_runs_s": trips_s[1:],
    }


_SELECT = (
    "SELECT recorded_at_ns, latitude, longitude, speed_mps, heading_degrees"
    " FROM location_history WHERE driver_id = {0} AND recorded_at_ns >= {1}"
    " AND recorded_at_ns < {2} ORDER BY recorded_at_ns"
)


def select_sqlite(path: Path, day_ns: int, repeats: int) -> tuple[float, int]:
    con = sqlite3.connect(path)
    runs: list[float] = []
    n = 0
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        n = len(
            con.execute(
                _SELECT.format("?", "?", "?"), (DAY_DRIVER, day_ns, day_ns + DAY * NS)
            ).fetchall()
        )
        runs.append(time.perf_counter() - t0)
    con.close()
    return statistics.median(runs[1:]), n


async def select_postgres(url: str, day_ns: int, repeats: int) -> tuple[float, int]:
    import asyncpg

    con = await asyncpg.connect(url)
    runs: list[float] = []
    n = 0
    try:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            n = len(
                await con.fetch(
                    _SELECT.format("$1", "$2", "$3"), DAY_DRIVER, day_ns, day_ns + DAY * NS
                )
            )
            runs.append(time.perf_counter() - t0)
    finally:
        await con.close()
    return statistics.median(runs[1:]), n


def _today_ns() -> int:
    return time.time_ns() // (DAY * NS) * DAY * NS


async def ingest(repo: Any, seconds: float, run: int) -> dict[str, Any]:
    """New fixes (today, 200 drivers, batches of INGEST_BATCH) through the repository's
    commit path for `seconds`, as fast as it takes them; run `run` has fix times of its own."""
    from driver_service.domain import Location

    # After the backlog's cutoff (today's midnight, drifting as the bench runs) however
    # early in the day the bench runs; fixes a few minutes ahead are stored as any.
    base = max(_today_ns() + 900 * NS, time.time_ns() - 3_000 * NS) + run * 30 * NS
    fixes = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds:
        batch = [
            Location(
                f"ingest-{(fixes + k) % 200:03d}", 52.5, 13.4, 5.0, 0.0, base + (fixes + k) * 1000
            )
            for k in range(INGEST_BATCH)
        ]
        await repo.record_locations(batch)
        fixes += INGEST_BATCH
    return {
        "fixes": fixes,
        "seconds": elapsed,
        "fixes_per_s": fixes / elapsed,
        "process_cpu_s": time.process_time() - cpu0,
    }


async def with_retention(
    repo: Any, seconds: float, run: int, *, retention_s: float, every_s: float, first_s: float
) -> dict[str, Any]:
    """`ingest` beside the server's own retention loop (`run_retention`, the default pace),
    stopped with the ingestion; what the pacer spent and removed meanwhile."""
    from driver_service.app.history import LocationHistory

    history = LocationHistory(repo, retention_s=retention_s)
    task = asyncio.create_task(history.run_retention(every_s, first_after_s=first_s))
    try:
        result = await ingest(repo, seconds, run)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    pacer = history.pacer
    result.update(
        expired=history.expired_total,
        expired_per_s=history.expired_total / result["seconds"],
        retention_busy_s=pacer.busy_s,
        retention_share=pacer.busy_s / result["seconds"],
        last_batch=pacer.batch,
    )
    return result


class Gate:
    """Lets the retention pass run only in the segments that measure it: `sleep` (the
    pacer's rest) counts only the time while the gate is open, and waits while it is shut,
    so within the open segments the pass keeps exactly its duty cycle."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.shut = asyncio.Event()
        self.shut.set()

    def open(self) -> None:
        self.shut.clear()
        self.opened.set()

    def close(self) -> None:
        self.opened.clear()
        self.shut.set()

    async def sleep(self, seconds: float) -> None:
        remaining = seconds
        while True:
            await self.opened.wait()
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.shut.wait(), remaining)
            except TimeoutError:
                return
            remaining -= time.monotonic() - started


async def backlog_interleaved(repo: Any, run: int) -> dict[str, Any]:
    """Ingestion in BACKLOG_SEGMENTS pairs of SEGMENT_S segments, without and with a
    10 M-fix backlog draining at the default pace, in the order A B B A A B ... (a drift of
    the machine's load over the minute cancels out). The cutoff is today's midnight: all
    bulk fixes of yesterday are expired at once, as after enabling retention on a full
    store, or after downtime. One pass runs through the segments with the backlog and is
    held (`Gate`) in the others."""
    from driver_service.app.history import RETENTION_EVERY_S, LocationHistory
    from driver_service.app.pacing import Pacer

    gate = Gate()
    history = LocationHistory(
        repo,
        retention_s=(time.time_ns() - _today_ns()) / NS,
        pacer=Pacer(sleep=gate.sleep),
    )
    without: list[dict[str, Any]] = []
    beside: list[dict[str, Any]] = []

    async def held_pass() -> int:
        await gate.opened.wait()
        return await history.expire_once(RETENTION_EVERY_S)

    pass_task = asyncio.create_task(held_pass())
    try:
        for k in range(BACKLOG_SEGMENTS):
            for draining in (False, True) if k % 2 == 0 else (True, False):
                if not draining:
                    without.append(await ingest(repo, SEGMENT_S, run + 2 * k))
                    continue
                gate.open()
                beside.append(await ingest(repo, SEGMENT_S, run + 2 * k + 1))
                gate.close()
    finally:
        pass_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pass_task
    seconds = sum(r["seconds"] for r in beside)
    pacer = history.pacer
    return {
        "segment_s": SEGMENT_S,
        "without_fixes_per_s": sum(r["fixes"] for r in without)
        / sum(r["seconds"] for r in without),
        "with_fixes_per_s": sum(r["fixes"] for r in beside) / seconds,
        "without_fixes_per_cpu_s": sum(r["fixes"] for r in without)
        / sum(r["process_cpu_s"] for r in without),
        "with_fixes_per_cpu_s": sum(r["fixes"] for r in beside)
        / sum(r["process_cpu_s"] for r in beside),
        "segments_without": [round(r["fixes_per_s"]) for r in without],
        "segments_with": [round(r["fixes_per_s"]) for r in beside],
        "expired": history.expired_total,
        "expired_per_s": history.expired_total / seconds,
        "retention_busy_s": pacer.busy_s,
        "retention_share": pacer.busy_s / seconds,
        "last_batch": pacer.batch,
    }


async def ingest_runs(open_repo: Any, day_ns: int) -> dict[str, Any]:
    """After a warm-up, ingestion beside retention at `serve`'s cadence, between two runs
    without it (the baseline is their mean: the machine's load drifts), then beside a
    draining backlog (`backlog_interleaved`). At the cadence, the first pass comes 5 s in,
    over the minute of bulk fixes (1,000 drivers at 1 Hz) that expired since the last one,
    as on a server in its steady state; the next is one interval after it, past the
    measurement, which spans one whole interval: one pass and its rest, what `serve` does
    every minute."""
    from driver_service.app.history import RETENTION_EVERY_S

    repo = await open_repo()
    try:
        # Not counted: the first half minute of writing into a freshly copied store runs
        # ahead of the kernel's writeback (~40 % faster than what follows on the bench VM).
        warm = await ingest(repo, BASELINE_S, 20)
        base = await ingest(repo, BASELINE_S, 0)
        first_s = 5.0
        # The cutoff at the first pass: one interval into the bulk data.
        cadence_retention_s = (
            time.time_ns() + first_s * NS - (day_ns + RETENTION_EVERY_S * NS)
        ) / NS
        cadence = await with_retention(
            repo, RETENTION_EVERY_S + first_s, 1,
            retention_s=cadence_retention_s, every_s=RETENTION_EVERY_S, first_s=first_s,
        )  # fmt: skip
        again = await ingest(repo, BASELINE_S, 2)
        backlog = await backlog_interleaved(repo, 3)
    finally:
        await repo.close()
    baseline = (base["fixes_per_s"] + again["fixes_per_s"]) / 2
    cadence_ratio = cadence["fixes_per_s"] / baseline
    backlog_ratio = backlog["with_fixes_per_s"] / backlog["without_fixes_per_s"]
    drain = backlog["expired_per_s"]

    def per_cpu(run: dict[str, Any]) -> float:
        return float(run["fixes"] / run["process_cpu_s"])

    # This process's CPU per fix: on SQLite all of the store's work (writer thread
    # included) is in it, and time spent waiting for a core on a loaded machine is not.
    cpu_baseline = (per_cpu(base) + per_cpu(again)) / 2
    return {
        "warm_up_not_counted": warm,
        "without_retention": base,
        "without_retention_again": again,
        "baseline_fixes_per_s": baseline,
        "at_cadence": cadence,
        "backlog": backlog,
        "cadence_ratio": cadence_ratio,
        "backlog_ratio": backlog_ratio,
        "cadence_cpu_ratio": per_cpu(cadence) / cpu_baseline,
        "backlog_cpu_ratio": backlog["with_fixes_per_cpu_s"] / backlog["without_fixes_per_cpu_s"],
        "backlog_10m_drain_h": (10_000_000 / drain / 3600) if drain else None,
        "within_10_percent": cadence_ratio >= 0.9 and backlog_ratio >= 0.9,
    }


def run(work: Path, *, repeats: int, stores: tuple[str, ...]) -> dict[str, Any]:
    day_ns = _yesterday_ns()
    result: dict[str, Any] = {"fixes": DRIVERS * FIXES_PER_DRIVER + DAY, "day_start_ns": day_ns}
    cache = Path(os.environ.get("DRIVER_SERVICE_BENCH_CACHE", "/tmp/driver-service-bench"))
    data_dir = cache / "history-sqlite"
    path, built_s = build_sqlite(data_dir, day_ns)
    print(f"  sqlite: store built in {built_s:.0f} s ({path.stat().st_size / 1e9:.2f} GB)")
    with serve(["--data-dir", str(data_dir)], work) as target:
        rpc = common.run_async(rpc_times(target, day_ns, repeats))
    select_s, rows = select_sqlite(path, day_ns, repeats)
    rpc.update(select_s=select_s, select_rows=rows, build_s=built_s)
    print(f"  sqlite: {rpc}")
    # Ingestion on a copy: retention expires the bulk data, and the cache must keep it.
    copy_dir = work / "sqlite-ingest"
    shutil.copytree(data_dir, copy_dir)

    async def open_sqlite() -> Any:
        from driver_service.adapters.sqlite.repository import SqliteRepository

        return await SqliteRepository.open(copy_dir / "driver-service.sqlite3")

    rpc["ingest"] = common.run_async(ingest_runs(open_sqlite, day_ns))
    print(f"  sqlite ingest: {rpc['ingest']}")
    shutil.rmtree(copy_dir)
    result["sqlite"] = rpc
    for url in stores:
        built = common.run_async(build_postgres(url, day_ns))
        print(f"  postgres: store built in {built:.0f} s")
        with serve(["--store", url], work) as target:
            pg = common.run_async(rpc_times(target, day_ns, repeats))
        select_s, rows = common.run_async(select_postgres(url, day_ns, repeats))
        pg.update(select_s=select_s, select_rows=rows, build_s=built)
        print(f"  postgres: {pg}")

        async def open_pg(url: str = url) -> Any:
            from driver_service.adapters.postgres.repository import PostgresRepository

            return await PostgresRepository.open(url)

        pg["ingest"] = common.run_async(ingest_runs(open_pg, day_ns))
        print(f"  postgres ingest: {pg['ingest']}")
        result["postgres"] = pg
    for name in ("sqlite", "postgres"):
        if name in result:
            r = result[name]
            r["meets_trail_target"] = r["trail_s"] <= 0.5
            r["meets_trips_target"] = r["trips_s"] <= 1.0
    return result
