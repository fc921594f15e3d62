"""Ingest without gRPC: CPU per stored update of the storage layer, the write path and the
batch servicer, so a change to any of them shows up apart from the RPC framework's cost.

    .venv/bin/python -m bench.ingest_micro [--total 200000] [--repeats 5] [--layers ...]

Layers, each on a fresh SQLite file in a temporary directory (same disk as the real bench),
holding --history older rows first if asked (inserts into an empty table flatter any layout):

repository  SqliteRepository.record_locations on prebuilt Locations, in commits of --commit
writer      DriverTracking's upload path: one Upload, every update offered (validation, rate
            limit, LocationWriter group commit, MemoryBus publish), then finish()
servicer    DriverBatchServicer.UploadLocationBatches fed LocationBatch messages parsed from
            bytes (500 updates each, as bench/ingest.py sends them), then the summary

The figure is updates per CPU-second of this whole process (time.process_time, every thread,
so the SQLite thread counts), median over the repeats; wall time is shown but is noisy on a
shared machine. Every run checks that all updates were committed.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import astuple
from pathlib import Path
from typing import Any

from bench.common import DRIVERS
from bench.ingest import BATCH_SIZE, update
from driver_service._gen.driver.v1 import batch_pb2 as bpb
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api.batch_servicer import DriverBatchServicer
from driver_service.app.fanout import MemoryBus
from driver_service.app.ratelimit import RateLimiter
from driver_service.app.tracking import DriverTracking
from driver_service.domain import Location
from driver_service.wire import pb_to_location

LAYERS = ("repository", "writer", "servicer")
DB_NAME = "micro.sqlite3"


def base_ns() -> int:
    """An hour ago: every timestamp valid, none in the future."""
    return time.time_ns() - 3_600_000_000_000


def prefill(path: Path, rows: int) -> None:
    """A history of `rows` older fixes (commits of 50,000), so inserts land in a table of a
    realistic size rather than an empty one."""
    if not rows:
        return
    old = base_ns() - 7_200_000_000_000

    async def fill() -> None:
        repo = await SqliteRepository.open(path)
        try:
            for start in range(0, rows, 50_000):
                await repo.record_locations(
                    [
                        Location(f"drv-{i % DRIVERS:05d}", 52.5, 13.4, 5.0, 90.0, old + i * 1000)
                        for i in range(start, min(rows, start + 50_000))
                    ]
                )
        finally:
            await repo.close()

    _run(fill())


def stored(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM location_history").fetchone()[0])


def _locations(total: int) -> list[Location]:
    """`total` distinct updates as the servicer reads them off the wire."""
    return [pb_to_location(update(i, base_ns())) for i in range(total)]


async def _repository(path: Path, total: int, commit: int) -> float:
    locations = _locations(total)
    repo = await SqliteRepository.open(path)
    try:
        cpu0 = time.process_time()
        for i in range(0, total, commit):
            await repo.record_locations(locations[i : i + commit])
        return time.process_time() - cpu0
    finally:
        await repo.close()


def _tracking(repo: SqliteRepository) -> DriverTracking:
    # The server's defaults: 100/s per driver with a burst of 20,000 (bench: 10,000 drivers).
    return DriverTracking(repo, MemoryBus(), rate_limiter=RateLimiter(100, 20_000))


async def _writer(path: Path, total: int, commit: int) -> float:
    del commit  # group commit decides
    # Upload.offer's arguments are a Location's fields, in order.
    rows = [astuple(location) for location in _locations(total)]
    repo = await SqliteRepository.open(path)
    tracking = _tracking(repo)
    await tracking.start()
    try:
        cpu0 = time.process_time()
        upload = tracking.new_upload()
        for row in rows:
            await upload.offer(*row)
        result = await upload.finish()
        cpu = time.process_time() - cpu0
        assert result.persisted_count == total, result
        return cpu
    finally:
        await tracking.close()


class _Context:
    """What the servicer touches of a ServicerContext when nothing goes wrong: nothing."""

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"aborted: {code} {details}")


async def _servicer(path: Path, total: int, commit: int) -> float:
    del commit
    msgs = [update(i, base_ns()) for i in range(total)]
    frames = [
        bpb.LocationBatch(updates=msgs[i : i + BATCH_SIZE]).SerializeToString()
        for i in range(0, total, BATCH_SIZE)
    ]
    repo = await SqliteRepository.open(path)
    tracking = _tracking(repo)
    await tracking.start()
    servicer = DriverBatchServicer(tracking)

    async def requests() -> AsyncIterator[bpb.LocationBatch]:
        for frame in frames:
            yield bpb.LocationBatch.FromString(frame)  # decoding is on the server's bill

    try:
        cpu0 = time.process_time()
        summary = await servicer.UploadLocationBatches(requests(), _Context())  # type: ignore[arg-type]
        cpu = time.process_time() - cpu0
        assert summary.persisted_count == total, summary
        return cpu
    finally:
        await tracking.close()


RUNNERS: dict[str, Callable[[Path, int, int], Coroutine[Any, Any, float]]] = {
    "repository": _repository,
    "writer": _writer,
    "servicer": _servicer,
}


def run_layer(layer: str, total: int, commit: int, history: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run on a fresh file holding `history` older rows;
    checks every row landed."""
    with tempfile.TemporaryDirectory(prefix="ingest-micro-", dir="/tmp") as tmp:
        path = Path(tmp) / DB_NAME
        prefill(path, history)
        t0 = time.monotonic()
        cpu = _run(RUNNERS[layer](path, total, commit))
        wall = time.monotonic() - t0
        count = stored(path)
        if count != total + history:
            raise SystemExit(f"{layer}: {count - history} of {total} updates stored")
    return cpu, wall


def _run(coro: Coroutine[Any, Any, float]) -> float:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the server uses it when installed
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_micro", description=__doc__)
    parser.add_argument("--layers", nargs="*", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--total", type=int, default=200_000)
    parser.add_argument("--commit", type=int, default=2_000, help="updates per commit (repository)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--history", type=int, default=0, help="older rows stored first")
    args = parser.parse_args(argv)
    print(
        f"{args.total:,} updates over {DRIVERS:,} drivers onto {args.history:,} rows of "
        f"history; median of {args.repeats}"
    )
    for layer in args.layers:
        runs = [
            run_layer(layer, args.total, args.commit, args.history) for _ in range(args.repeats)
        ]
        per_cpu = sorted(args.total / cpu for cpu, _ in runs)
        us = statistics.median(cpu for cpu, _ in runs) / args.total * 1e6
        print(
            f"  {layer:<10} {statistics.median(per_cpu):>9,.0f} updates/CPU-s"
            f" (min {per_cpu[0]:,.0f}, max {per_cpu[-1]:,.0f}; {us:.2f} µs/update;"
            f" wall median {statistics.median(w for _, w in runs):.2f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
