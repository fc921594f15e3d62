"""Part `http`: the HTTP/JSON front door beside the FastAPI anchor and our gRPC GetDriver.

1. GET /v1/drivers/{id} as JSON (h2load --h1) on `driver-service serve --insecure
   --http-listen`, the same process's gRPC GetDriver (h2load, HTTP/2), and the FastAPI
   anchor of part `unary` over the same SQLite data: requests per second and server CPU per
   request (read from /proc, so the load generator's share of a small machine is left out).
2. SSE fan-out: 1,000 clients on one driver's `locations:stream`; per round one upload,
   then the time from sending it until each client has read the new location (p50/p99/max).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    SERVER_CORE,
    Server,
    free_port,
    percentile,
    pinned,
    server,
    wait_for_port,
)
from bench.servers import preload
from bench.unary import GET_DRIVER, PROBE_ID, get_driver_body, sweep, verify_grpc, verify_http

CONCURRENCY = (10, 50)
FANOUT_CLIENTS = 1_000
FANOUT_DRIVER = "drv-fanout"


@contextlib.contextmanager
def serve(data: Path, workdir: Path) -> Iterator[tuple[Server, int]]:
    """`driver-service serve --insecure` with its HTTP door, pinned to the server core."""
    grpc_port, http_port = free_port(), free_port()
    log = workdir / f"serve-http-{http_port}.log"
    argv = [str(Path(PYTHON).parent / "driver-service"), "serve", "--insecure"]
    argv += ["--listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}"]
    argv += ["--admin-listen", "", "--data-dir", str(data), "--access-log", "off"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CORE, argv), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    running = Server(proc, grpc_port, log)
    try:
        wait_for_port(grpc_port, proc)
        wait_for_port(http_port, proc)
        yield running, http_port
    finally:
        running.stop()


def verify_json(port: int) -> dict[str, Any]:
    """Our door answers in the proto3 JSON mapping (driverId), the anchor in snake_case."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/drivers/{PROBE_ID}") as reply:
        body = reply.read()
    if json.loads(body).get("driverId") != PROBE_ID:
        raise RuntimeError(f"HTTP verification failed: {body!r}")
    return {"http_status": reply.status, "wire_bytes": len(body), "body": body.decode()}


def requests(workdir: Path, *, repeats: int, duration_s: float) -> dict[str, Any]:
    data = workdir / "http-data"
    data.mkdir(parents=True, exist_ok=True)
    asyncio.run(preload(data))
    common = {"concurrency": CONCURRENCY, "repeats": repeats, "duration_s": duration_s}
    out: dict[str, Any] = {}
    with serve(data, workdir) as (srv, http_port):
        out["ours_http"] = {
            "verified": verify_json(http_port),
            "points": sweep(
                f"http://127.0.0.1:{http_port}/v1/drivers/{PROBE_ID}",
                srv.pid,
                body=None,
                headers=(),
                http1=True,
                **common,
            ),
        }
        out["ours_grpc"] = {
            "verified": verify_grpc(srv.port),
            "points": sweep(
                f"http://127.0.0.1:{srv.port}{GET_DRIVER}",
                srv.pid,
                body=get_driver_body(),
                **common,
            ),
        }
    with server("fastapi", "--data-dir", str(data), workdir=workdir) as api:
        out["fastapi"] = {
            "verified": verify_http(api.port),
            "points": sweep(
                f"http://127.0.0.1:{api.port}/v1/drivers/{PROBE_ID}",
                api.pid,
                body=None,
                headers=(),
                http1=True,
                **common,
            ),
        }
    for name, variant in out.items():
        print(
            f"  {name}: "
            + ", ".join(
                f"c={c} {p['rps']:.0f} rps, {p['cpu_us_per_call']:.0f} us CPU/req "
                f"({1e6 / max(p['cpu_us_per_call'], 1e-9):.0f} req per core-second)"
                for c, p in variant["points"].items()
            )
        )
    return out


async def _sse_client(port: int, ready: asyncio.Event, seen: dict[int, float]) -> None:
    """One SSE reader: records when it first reads the location of each round."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/drivers/{FANOUT_DRIVER}/locations:stream HTTP/1.1\r\nhost: bench\r\n\r\n".encode()
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    ready.set()
    try:
        while line := await reader.readline():
            if line.startswith(b"data: {"):
                now = time.monotonic()
                latitude = json.loads(line[6:])["latitude"]
                round_no = round((latitude - 50.0) * 1e4)
                seen.setdefault(round_no, now)
    finally:
        writer.close()


async def _upload(port: int, latitude: float) -> None:
    body = json.dumps({"locations": [{"latitude": latitude, "longitude": 13.4}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/drivers/{FANOUT_DRIVER}:uploadLocations HTTP/1.1\r\nhost: bench\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"upload failed: {status!r}")
    await reader.read()
    writer.close()


async def _fanout(port: int, clients: int, rounds: int) -> dict[str, Any]:
    await _upload(port, 50.0)
    seen: list[dict[int, float]] = [{} for _ in range(clients)]
    tasks = []
    for n in range(clients):
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(_sse_client(port, ready, seen[n])))
        await ready.wait()
    await asyncio.sleep(1)
    latencies: list[float] = []
    incomplete = 0
    for r in range(1, rounds + 1):
        t0 = time.monotonic()
        await _upload(port, 50.0 + r * 1e-4)
        deadline = t0 + 10
        while sum(r in s for s in seen) < clients and time.monotonic() < deadline:  # noqa: ASYNC110 - a bench's wait, not the readers' path
            await asyncio.sleep(0.005)
        got = [s[r] - t0 for s in seen if r in s]
        incomplete += clients - len(got)
        latencies += [1000 * x for x in got]
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    return {
        "clients": clients,
        "rounds": rounds,
        "deliveries": len(latencies),
        "missed": incomplete,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
    }


def fanout(workdir: Path, *, clients: int, rounds: int) -> dict[str, Any]:
    data = workdir / "http-fanout-data"
    data.mkdir(parents=True, exist_ok=True)
    with serve(data, workdir) as (_, http_port):
        result = asyncio.run(_fanout(http_port, clients, rounds))
    print(
        f"  SSE fan-out to {clients}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f}"
        f" ms, max {result['max_ms']:.1f} ms ({result['missed']} missed)"
    )
    return result


def run(workdir: Path, *, repeats: int, duration_s: float, rounds: int) -> dict[str, Any]:
    return {
        "requests": requests(workdir, repeats=repeats, duration_s=duration_s),
        "sse_fanout": fanout(workdir, clients=FANOUT_CLIENTS, rounds=rounds),
    }
