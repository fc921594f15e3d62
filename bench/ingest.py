"""2. Ingest: location updates per second durably stored, through the seed's UploadLocations
(1 and 50 parallel streams) and through UploadLocationBatches, on SQLite and PostgreSQL.

The client is h2load sending a prebuilt request body (every update already framed), one
h2load process per stream, so the client costs almost nothing; the count that matters is
read back from the store: rows in location_history that the server committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CLIENT_CORE,
    DRIVERS,
    cpu_seconds,
    driver_id,
    grpc_frame,
    pinned,
    server,
)
from driver_service._gen.driver.v1 import batch_pb2 as bpb
from driver_service._gen.driver.v1 import driver_pb2 as pb

UPLOAD = "/driver.v1.DriverService/UploadLocations"
UPLOAD_BATCHES = "/driver.v1.DriverBatchService/UploadLocationBatches"
PRODUCTION_INSECURE = "pipeline,request_id,logging,metrics"
BATCH_SIZE = 500  # ~28 KB per LocationBatch: under the 64 KiB message limit


def update(index: int, base_ns: int) -> pb.LocationUpdate:
    n = index % DRIVERS
    msg = pb.LocationUpdate(
        driver_id=driver_id(n),
        latitude=52.3 + (index % 997) / 5000,
        longitude=13.2 + (index % 991) / 5000,
        speed_mps=9.5,
        heading_degrees=float(index % 360),
    )
    msg.timestamp.FromNanoseconds(base_ns + index * 1000)  # unique (driver, time) per update
    return msg


def bodies(total: int, streams: int, batched: bool, base_ns: int) -> list[bytes]:
    """One request body per stream; together they carry `total` distinct updates."""
    per = total // streams
    out = []
    for s in range(streams):
        updates = [update(s * per + i, base_ns) for i in range(per)]
        if batched:
            frames = [
                grpc_frame(
                    bpb.LocationBatch(updates=updates[i : i + BATCH_SIZE]).SerializeToString()
                )
                for i in range(0, per, BATCH_SIZE)
            ]
        else:
            frames = [grpc_frame(u.SerializeToString()) for u in updates]
        out.append(b"".join(frames))
    return out


async def _count_postgres(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM location_history"))
    finally:
        await conn.close()


def stored_rows(data: Path, store: str) -> int:
    if store:
        return asyncio.run(_count_postgres(store))
    path = data / "driver-service.sqlite3"
    candidates = [path] if path.exists() else sorted(data.glob("*.sqlite3"))
    with sqlite3.connect(candidates[0]) as db:
        return int(db.execute("SELECT count(*) FROM location_history").fetchone()[0])


def one_point(
    port: int,
    pid: int,
    data: Path,
    store: str,
    *,
    total: int,
    streams: int,
    batched: bool,
    workdir: Path,
    stores: bool = True,
    client_core: str = CLIENT_CORE,
) -> dict[str, Any]:
    """One ingest measurement; with `stores=False` (the bare floor) nothing is stored and
    every update of a stream that succeeded counts."""
    base_ns = time.time_ns() - 3_600_000_000_000 + int(time.monotonic_ns() % 10**12)
    files = []
    for s, body in enumerate(bodies(total, streams, batched, base_ns)):
        f = workdir / f"ingest-body-{s}.bin"
        f.write_bytes(body)
        files.append(f)
    before = stored_rows(data, store) if stores else 0
    path = UPLOAD_BATCHES if batched else UPLOAD
    url = f"http://127.0.0.1:{port}{path}"
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            pinned(
                client_core,
                [
                    "h2load",
                    "-n",
                    "1",
                    "-c",
                    "1",
                    "-d",
                    str(f),
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    url,
                ],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for f in files
    ]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    failed = sum("1 succeeded" not in o for o in outputs)
    stored = (
        stored_rows(data, store) - before if stores else total * (len(files) - failed) // len(files)
    )
    for f in files:
        f.unlink()
    return {
        "updates": total,
        "stored": stored,
        "failed_streams": failed,
        "seconds": wall,
        "updates_per_s": stored / wall,
        "server_cpu_pct": 100 * cpu / wall,
        "updates_per_cpu_s": stored / max(cpu, 1e-9),
    }


def run(
    workdir: Path,
    *,
    repeats: int = 3,
    total: int = 100_000,
    stores: tuple[str, ...] = (),
    floors: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Each case on a fresh server and store; `stores` adds PostgreSQL URLs (a fresh
    database each) to the SQLite default, `floors` PostgreSQL's durable floor in each of
    theirs (other fresh databases)."""
    results: dict[str, Any] = {"total_updates": total, "repeats": repeats, "cases": {}}
    cases = [
        ("upload_1_stream", 1, False),
        ("upload_50_streams", 50, False),
        ("batches_1_stream", 1, True),
        ("batches_50_streams", 50, True),
    ]
    setups = [
        # The floor: grpc.aio reading the seed's stream and nothing else.
        ("bare", "", "bare", [], cases[:2]),
        # The durable floor: the same stream stored in SQLite with the least work (the rows
        # ours writes, the same settings): what no code of ours can beat on this store.
        ("durable-floor", "", "durable", [], cases[:2]),
        # Our servicer and store without the call pipeline: what the pipeline costs.
        ("sqlite-no-pipeline", "", "chain", ["--interceptors", ""], cases[:2]),
        ("sqlite", "", "chain", ["--interceptors", PRODUCTION_INSECURE], cases),
        *[
            ("postgres", s, "chain", ["--interceptors", PRODUCTION_INSECURE, "--store", s], cases)
            for s in stores
        ],
        # PostgreSQL's durable floor, in a database of its own on the same server.
        *[("postgres-durable-floor", f, "durable", ["--store", f], cases[:2]) for f in floors],
    ]
    for store_name, store, kind, extra, store_cases in setups:
        data = workdir / f"ingest-{store_name}"
        data.mkdir(parents=True, exist_ok=True)
        args = [] if kind == "bare" else ["--data-dir", str(data), *extra]
        with server(kind, *args, workdir=workdir) as srv:
            for name, streams, batched in store_cases:
                n = total * (4 if batched else 1)
                runs = [
                    one_point(
                        srv.port,
                        srv.pid,
                        data,
                        store,
                        total=n,
                        streams=streams,
                        batched=batched,
                        workdir=workdir,
                        stores=kind != "bare",
                    )
                    for _ in range(repeats)
                ]
                rates = sorted(r["updates_per_s"] for r in runs)
                key = f"{store_name}/{name}"
                results["cases"][key] = {
                    "updates_per_s": rates[len(rates) // 2],
                    "min": rates[0],
                    "max": rates[-1],
                    "updates_per_cpu_s": sorted(r["updates_per_cpu_s"] for r in runs)[
                        len(runs) // 2
                    ],
                    "server_cpu_pct": sorted(r["server_cpu_pct"] for r in runs)[len(runs) // 2],
                    "all_stored": all(
                        r["stored"] == r["updates"] and not r["failed_streams"] for r in runs
                    ),
                    "runs": runs,
                }
                print(
                    f"  {key}: {rates[len(rates) // 2]:,.0f} updates/s "
                    f"(stored all: {results['cases'][key]['all_stored']})"
                )
    return results
