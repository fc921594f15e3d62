"""1. Unary GetDriver at 10/50/100/200 clients: our full chain (plaintext and TLS), the bare
grpc.aio floor, and FastAPI's GET /v1/drivers/{id} over the same data; bytes per response."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from bench.common import LoadResult, driver_id, grpc_frame, h2load, server, summarize
from bench.servers import preload
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc

CONCURRENCY = (10, 50, 100, 200)
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
PROBE_ID = driver_id(4242)
GET_DRIVER = "/driver.v1.DriverService/GetDriver"
#: What the chain variant uses for "the production chain": all but auth (insecure, auth off).
PRODUCTION_INSECURE = "pipeline,request_id,logging,metrics"


def get_driver_body(ident: str = PROBE_ID) -> bytes:
    return grpc_frame(pb.GetDriverRequest(driver_id=ident).SerializeToString())


def verify_grpc(port: int, tls_dir: Path | None = None) -> dict[str, Any]:
    """One call with a real gRPC client: grpc-status OK and the preloaded driver's fields;
    returns the response's size on the wire (5-byte prefix + message)."""
    target = f"localhost:{port}"
    if tls_dir is None:
        channel = grpc.insecure_channel(target)
    else:
        creds = grpc.ssl_channel_credentials((tls_dir / "ca.crt").read_bytes())
        channel = grpc.secure_channel(target, creds)
    with channel:
        response, call = pb_grpc.DriverServiceStub(channel).GetDriver.with_call(
            pb.GetDriverRequest(driver_id=PROBE_ID), timeout=10
        )
    if call.code() != grpc.StatusCode.OK or response.driver_id != PROBE_ID:
        raise RuntimeError(f"verification failed: {call.code()} {response}")
    return {"grpc_status": call.code().name, "wire_bytes": 5 + response.ByteSize()}


def verify_http(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/drivers/{PROBE_ID}") as reply:
        body = reply.read()
        status = reply.status
    if status != 200 or json.loads(body)["driver_id"] != PROBE_ID:
        raise RuntimeError(f"HTTP verification failed: {status} {body!r}")
    return {"http_status": status, "wire_bytes": len(body), "body": body.decode()}


def sweep(
    url: str,
    pid: int,
    *,
    concurrency: tuple[int, ...],
    repeats: int,
    duration_s: float,
    body: bytes | None,
    headers: tuple[str, ...] = GRPC_HEADERS,
    http1: bool = False,
) -> dict[str, Any]:
    """Warm up once, then `repeats` rounds of every concurrency (interleaved, so a burst of
    load from elsewhere on the machine spreads over the points rather than one of them)."""
    h2load(
        url,
        clients=50,
        duration_s=1,
        warmup_s=0.5,
        server_pid=pid,
        body=body,
        headers=headers,
        http1=http1,
    )
    runs: dict[int, list[LoadResult]] = {c: [] for c in concurrency}
    for _ in range(repeats):
        for c in concurrency:
            runs[c].append(
                h2load(
                    url,
                    clients=c,
                    duration_s=duration_s,
                    server_pid=pid,
                    body=body,
                    headers=headers,
                    http1=http1,
                )
            )
    return {str(c): summarize(r) for c, r in runs.items()}


def run(
    workdir: Path,
    *,
    repeats: int = 3,
    duration_s: float = 3.0,
    concurrency: tuple[int, ...] = CONCURRENCY,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    from driver_service.security.devcerts import create_dev_certs

    data = workdir / "unary-data"
    data.mkdir(parents=True, exist_ok=True)
    asyncio.run(preload(data))
    certs = create_dev_certs(workdir / "certs", overwrite=True).directory
    body = get_driver_body()
    out: dict[str, Any] = {
        "concurrency": list(concurrency),
        "repeats": repeats,
        "duration_s": duration_s,
        "variants": {},
    }
    variants: list[tuple[str, str, tuple[str, ...]]] = [
        ("ours", "full", ("--data-dir", str(data))),
        (
            "ours_tls",
            "chain",
            ("--data-dir", str(data), "--interceptors", PRODUCTION_INSECURE, "--tls", str(certs)),
        ),
        ("bare", "bare", ()),
        ("fastapi", "fastapi", ("--data-dir", str(data))),
    ]
    for name, kind, args in variants:
        if only and name not in only:
            continue
        with server(kind, *args, workdir=workdir) as srv:
            if name == "fastapi":
                check = verify_http(srv.port)
                url = f"http://127.0.0.1:{srv.port}/v1/drivers/{PROBE_ID}"
                points = sweep(
                    url,
                    srv.pid,
                    concurrency=concurrency,
                    repeats=repeats,
                    duration_s=duration_s,
                    body=None,
                    headers=(),
                    http1=True,
                )
            else:
                tls = certs if name == "ours_tls" else None
                check = verify_grpc(srv.port, tls)
                scheme = "https" if tls else "http"
                url = f"{scheme}://127.0.0.1:{srv.port}{GET_DRIVER}"
                points = sweep(
                    url,
                    srv.pid,
                    concurrency=concurrency,
                    repeats=repeats,
                    duration_s=duration_s,
                    body=body,
                )
        out["variants"][name] = {"verified": check, "points": points}
        print(
            f"  {name}: "
            + ", ".join(
                f"c={c} {p['rps']:.0f} rps p99 {p['p99_ms']:.1f} ms" for c, p in points.items()
            )
        )
    return out


def batch_lookups(
    workdir: Path, *, repeats: int = 3, duration_s: float = 3.0, sizes: tuple[int, ...] = (100, 500)
) -> dict[str, Any]:
    """GetDrivers with N distinct ids per call through the production chain (auth off):
    driver lookups per second, and per second of server CPU."""
    from driver_service._gen.driver.v1 import batch_pb2 as bpb

    data = workdir / "unary-data"
    data.mkdir(parents=True, exist_ok=True)
    asyncio.run(preload(data))
    out: dict[str, Any] = {}
    args = ("--data-dir", str(data), "--interceptors", PRODUCTION_INSECURE)
    with server("chain", *args, workdir=workdir) as srv:
        url = f"http://127.0.0.1:{srv.port}/driver.v1.DriverBatchService/GetDrivers"
        for size in sizes:
            ids = [driver_id((n * 37) % 10_000) for n in range(size)]
            body = grpc_frame(bpb.GetDriversRequest(driver_ids=ids).SerializeToString())
            point = sweep(
                url, srv.pid, concurrency=(10,), repeats=repeats, duration_s=duration_s, body=body
            )["10"]
            point["ids_per_call"] = size
            point["lookups_per_s"] = point["rps"] * size
            point["lookups_per_cpu_s"] = size * 1e6 / max(point["cpu_us_per_call"], 1e-9)
            out[str(size)] = point
            print(
                f"  GetDrivers x{size}: {point['lookups_per_s']:,.0f} lookups/s "
                f"({point['lookups_per_cpu_s']:,.0f} per CPU-second)"
            )
    return out
