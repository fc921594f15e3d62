"""Webhook delivery: deliveries per second to a fast local receiver, and delivery lag.

    .venv/bin/python -m bench.delivery [--events 3000] [--endpoints 8] [--repeats 3]

A real `driver-service serve` (SQLite, pinned to the server core) delivers to a receiver in
this process (tests/helpers/webhook_receiver.py: stdlib ThreadingHTTPServer answering 204 at
once, on the client core).

backlog  --events events are logged first (one `driver.online` per new driver), then
         endpoints are registered with after_id 0: the time from registering to the last
         first arrival gives deliveries per second, with 1 endpoint (one request in flight:
         the per-endpoint order costs a round trip per event) and with --endpoints endpoints
         (they run in parallel up to --webhook-max-concurrent). The server's CPU seconds
         over the same interval (/proc) give CPU per delivery, which is steadier than the
         rate on a shared machine.
lag      with --lag-endpoints endpoints registered, events are logged at a steady --rate per
         second (below what delivery sustains: rate x endpoints deliveries a second;
         uploads of 10 fixes stamped with the current time); lag is the event's time
         to the receiver reading the request (both wall clocks of this machine), p50/p99
         over every delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc

from bench import common
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import webhooks_pb2 as wpb
from driver_service._gen.driver.v1 import webhooks_pb2_grpc as wpb_grpc
from tests.helpers.webhook_receiver import Receiver

S = 10**9
FLAGS = (
    "--webhook-allow-http", "--webhook-allow-private", "--rate-limit", "0",
    "--stale-after", "86400", "--admin-listen", "127.0.0.1:0",
)  # fmt: skip


def start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        common.PYTHON, "-m", "driver_service", "serve", "--insecure",
        "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *FLAGS,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            common.pinned(common.SERVER_CORE, argv), cwd=common.ROOT, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        common.wait_for_port(port, proc, timeout_s=120)  # a busy shared machine starts slowly
    except BaseException:
        common.Server(proc, port, log).stop()
        raise
    return proc


async def log_events(stub: pb_grpc.DriverServiceStub, prefix: str, count: int) -> None:
    """`count` driver.online events, 500 a call, stamped now."""
    for start in range(0, count, 500):
        now = time.time_ns()
        msgs = []
        for n in range(start, min(count, start + 500)):
            msg = pb.LocationUpdate(driver_id=f"{prefix}-{n}", latitude=52.0, longitude=13.0)
            msg.timestamp.FromNanoseconds(now)
            msgs.append(msg)
        await stub.UploadLocations(iter(msgs), timeout=60)


async def add_endpoints(
    hooks: wpb_grpc.WebhookServiceStub, receiver: Receiver, tag: str, count: int, after: int | None
) -> list[str]:
    paths = [f"/{tag}-{n}" for n in range(count)]
    for path in paths:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        request = wpb.AddWebhookRequest(
            webhook=wpb.Webhook(id=path[1:], url=receiver.url_for(path)), secret=secret
        )
        if after is not None:
            request.after_id = after
        await hooks.AddWebhook(request)
    return paths


async def remove_endpoints(hooks: wpb_grpc.WebhookServiceStub, paths: list[str]) -> None:
    for path in paths:
        await hooks.RemoveWebhook(wpb.RemoveWebhookRequest(id=path[1:]))


def first_arrivals(receiver: Receiver, path: str) -> dict[str, int]:
    with receiver.lock:
        return dict(receiver.first_arrivals.get(path, {}))


async def wait_all(receiver: Receiver, paths: list[str], count: int, timeout_s: float) -> None:
    """Until `count` distinct events reached each path (polled cheaply: the receiver shares
    this process's GIL, and copying every request on each poll starved it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with receiver.lock:
            done = all(len(receiver.first_arrivals.get(p, {})) >= count for p in paths)
        if done:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every event delivered within {timeout_s} s")
        await asyncio.sleep(0.05)


async def backlog(
    pid: int, hooks: wpb_grpc.WebhookServiceStub, receiver: Receiver, tag: str,
    endpoints: int, events: int,
) -> dict[str, float]:  # fmt: skip
    cpu0, t0 = common.cpu_seconds(pid), time.perf_counter()
    paths = await add_endpoints(hooks, receiver, tag, endpoints, after=0)
    await wait_all(receiver, paths, events, 600)
    cpu = common.cpu_seconds(pid) - cpu0
    arrivals = [first_arrivals(receiver, p) for p in paths]
    last = max(max(a.values()) for a in arrivals)
    elapsed = (last - time.time_ns()) / S + time.perf_counter() - t0
    await remove_endpoints(hooks, paths)
    # The log also holds earlier repeats' lag events: count what arrived, not `events`.
    deliveries = sum(len(a) for a in arrivals)
    return {
        "endpoints": endpoints,
        "deliveries": deliveries,
        "seconds": elapsed,
        "deliveries_per_s": deliveries / elapsed,
        "server_cpu_ms_per_delivery": cpu * 1000 / deliveries,
    }


async def lag(
    hooks: wpb_grpc.WebhookServiceStub, stub: pb_grpc.DriverServiceStub, receiver: Receiver,
    tag: str, endpoints: int, rate: float, seconds: float,
) -> dict[str, float]:  # fmt: skip
    paths = await add_endpoints(hooks, receiver, tag, endpoints, after=None)
    sent: dict[str, int] = {}  # driver id -> event time
    batches = int(rate * seconds / 10)
    t0 = time.perf_counter()
    for b in range(batches):
        await asyncio.sleep(max(0.0, t0 + b * 10 / rate - time.perf_counter()))
        now = time.time_ns()
        msgs = []
        for n in range(10):
            driver = f"{tag}-{b}-{n}"
            msg = pb.LocationUpdate(driver_id=driver, latitude=52.0, longitude=13.0)
            msg.timestamp.FromNanoseconds(now)
            msgs.append(msg)
            sent[driver] = now
        await stub.UploadLocations(iter(msgs), timeout=30)
    await wait_all(receiver, paths, len(sent), 120)
    lags_ms = []
    for path in paths:
        for r in receiver.delivered_to(path):
            data = json.loads(r.body)["data"]
            if data["driverId"] in sent:
                lags_ms.append((r.at_ns - sent[data["driverId"]]) / 1e6)
    await remove_endpoints(hooks, paths)
    lags_ms.sort()
    return {
        "endpoints": endpoints,
        "events_per_s": rate,
        "deliveries": len(lags_ms),
        "lag_p50_ms": common.percentile(lags_ms, 50),
        "lag_p99_ms": common.percentile(lags_ms, 99),
        "lag_max_ms": lags_ms[-1],
    }


async def measure(
    work: Path, repeats: int, events: int, endpoints: int, rate: float, seconds: float,
    lag_endpoints: int,
) -> dict[str, Any]:  # fmt: skip
    receiver = Receiver(mode="ok").start()
    port = common.free_port()
    data = work / "delivery-data"
    data.mkdir(exist_ok=True)
    proc = start_server(data, port, work / "delivery-server.log")
    runs: dict[str, list[dict[str, float]]] = {"one": [], "many": [], "lag": []}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DriverServiceStub(channel)
            hooks = wpb_grpc.WebhookServiceStub(channel)
            await log_events(stub, "backlog", events)
            for r in range(repeats):
                runs["one"].append(await backlog(proc.pid, hooks, receiver, f"one{r}", 1, events))
                runs["many"].append(
                    await backlog(proc.pid, hooks, receiver, f"many{r}", endpoints, events)
                )
                runs["lag"].append(
                    await lag(hooks, stub, receiver, f"lag{r}", lag_endpoints, rate, seconds)
                )
                print(f"  repeat {r + 1}: {runs['one'][-1]} {runs['many'][-1]} {runs['lag'][-1]}")
    finally:
        common.Server(proc, port, work / "delivery-server.log").stop()
        receiver.stop()

    def median(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[kind])

    return {
        "events": events,
        "endpoints": endpoints,
        "one_endpoint_deliveries_per_s": median("one", "deliveries_per_s"),
        "one_endpoint_cpu_ms_per_delivery": median("one", "server_cpu_ms_per_delivery"),
        "many_endpoints_deliveries_per_s": median("many", "deliveries_per_s"),
        "many_endpoints_cpu_ms_per_delivery": median("many", "server_cpu_ms_per_delivery"),
        "lag_events_per_s": rate,
        "lag_endpoints": lag_endpoints,
        "lag_p50_ms": median("lag", "lag_p50_ms"),
        "lag_p99_ms": median("lag", "lag_p99_ms"),
        "runs": runs,
    }


def run(
    work: Path, *, repeats: int = 3, events: int = 3000, endpoints: int = 8,
    rate: float = 50.0, seconds: float = 10.0, lag_endpoints: int = 4,
) -> dict[str, Any]:  # fmt: skip
    result = measure(work, repeats, events, endpoints, rate, seconds, lag_endpoints)
    return common.run_async(result)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--endpoints", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--lag-endpoints", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        result = run(
            Path(tmp), repeats=args.repeats, events=args.events, endpoints=args.endpoints,
            rate=args.rate, seconds=args.seconds, lag_endpoints=args.lag_endpoints,
        )  # fmt: skip
    result["machine"] = common.machine()
    common.write_result("delivery", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "machine")}, indent=2))


if __name__ == "__main__":
    main()
