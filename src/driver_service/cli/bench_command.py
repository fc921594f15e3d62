"""`driver-service bench`: a custom unary load run against any running server, with h2load.

`make bench` (python -m bench) is the full, reproducible suite; this command measures one
server you already run, e.g. a staging replica or a server started with other flags:

    driver-service bench --target 127.0.0.1:50051 --clients 10,100 --duration 5
    driver-service bench --target 127.0.0.1:50051 --ids 100      # GetDrivers, 100 ids a call

h2load (Debian package nghttp2-client) sends one prebuilt framed protobuf request per call
(`content-type: application/grpc`, `te: trailers`) and logs every request's latency; the
result lines are JSON, one per concurrency level.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from driver_service._gen.driver.v1 import batch_pb2 as bpb
from driver_service._gen.driver.v1 import driver_pb2 as pb

H2LOAD_MISSING = "driver-service bench: h2load not found: install the Debian package nghttp2-client"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="measure GetDriver / GetDrivers throughput and latency of a running server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the server")
    parser.add_argument("--tls", action="store_true", help="https (server certificate unchecked)")
    parser.add_argument("--driver-id", default="drv-04242", help="driver looked up (must exist)")
    parser.add_argument(
        "--ids", type=int, default=0, help="call GetDrivers with this many ids (0: GetDriver)"
    )
    parser.add_argument("--clients", default="10,50,100,200", help="comma-separated levels")
    parser.add_argument("--duration", type=int, default=5, help="seconds per level")
    parser.add_argument("--warm-up", type=int, default=1, help="seconds before each level")
    parser.add_argument("--token", default="", help="bearer token sent on every call")
    parser.add_argument("--cpu", default="", help="pin h2load to these cores (taskset list)")
    parser.set_defaults(run=run)


def _request(args: argparse.Namespace) -> tuple[str, bytes]:
    if args.ids > 0:
        ids = [args.driver_id] * args.ids
        message = bpb.GetDriversRequest(driver_ids=ids).SerializeToString()
        path = "/driver.v1.DriverBatchService/GetDrivers"
    else:
        message = pb.GetDriverRequest(driver_id=args.driver_id).SerializeToString()
        path = "/driver.v1.DriverService/GetDriver"
    return path, b"\x00" + len(message).to_bytes(4, "big") + message


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def measure(args: argparse.Namespace, clients: int, url: str, body_path: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.tsv"
        argv = ["h2load", "-c", str(clients), "-m", "1", "-D", str(args.duration)]
        argv += [f"--warm-up-time={args.warm_up}", "--log-file", str(log), "-d", str(body_path)]
        argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        if args.token:
            argv += ["-H", f"authorization: Bearer {args.token}"]
        if args.cpu and shutil.which("taskset"):
            argv = ["taskset", "-c", args.cpu, *argv]
        # The operator's own arguments, passed as a list (no shell).
        done = subprocess.run(  # noqa: S603
            [*argv, url], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or done.stdout.strip())
        rows = [line.split("\t") for line in log.read_text().split("\n") if line]
        # Status 0: logged at the window's edge without a response; not a call.
        latencies = sorted(int(row[2]) / 1000 for row in rows if row[1] != "0")
    rps = re.search(r"([\d.]+) req/s", done.stdout)
    failed = re.search(r"(\d+) failed, (\d+) errored", done.stdout)
    return {
        "clients": clients,
        "rps": float(rps.group(1)) if rps else 0.0,
        "lookups_per_s": (float(rps.group(1)) if rps else 0.0) * max(1, args.ids),
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
        "p999_ms": _percentile(latencies, 99.9),
        "errors": int(failed.group(1)) + int(failed.group(2)) if failed else 0,
    }


def run(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        print(H2LOAD_MISSING, file=sys.stderr)
        return 1
    try:
        levels = [int(c) for c in args.clients.split(",") if c]
    except ValueError:
        print(
            f"driver-service bench: --clients: not a list of numbers: {args.clients}",
            file=sys.stderr,
        )
        return 2
    path, body = _request(args)
    url = f"{'https' if args.tls else 'http'}://{args.target}{path}"
    fd, name = tempfile.mkstemp(prefix="bench-body-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        for clients in levels:
            try:
                print(json.dumps(measure(args, clients, url, Path(name))), flush=True)
            except RuntimeError as exc:
                print(f"driver-service bench: h2load failed: {exc}", file=sys.stderr)
                return 1
    finally:
        os.unlink(name)
    return 0
