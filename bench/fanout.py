"""3. Fan-out: an update acknowledged by UploadLocations → received by every watcher
(StreamLocation) of that driver, with 1 and with 1,000 watchers.

Watchers and uploader share one client process on the client core, so with 1,000 watchers
the client's own work to receive 1,000 messages is part of the tail; the server's share is
shown separately as its CPU per delivered message.

The same is measured against the floor, in the same run: the bare grpc.aio server
(bench.servers BareServicer, no code of ours, its heap settled as ours is) whose
UploadLocations hands the message it read to every StreamLocation watcher of that driver.
Our figures are under "cases", the floor's under "floor_cases" (same keys). The floor wakes
its watchers before it answers the upload, so its ack→received is negative: compare the two
by send→received and by server CPU per delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import cpu_seconds, percentile, run_async, server
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc

#: Channels to one target share a connection unless told not to; each needs its own, since
#: the server allows 1,000 concurrent streams per connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
#: The production default (--keepalive-timeout 1): a client stalled for a second loses its
#: connection (GOAWAY ping_timeout), which is part of what is measured.
KEEPALIVE_TIMEOUT_S = 1.0
STREAMS_PER_CHANNEL = 500


async def measure(port: int, pid: int, watchers: int, rounds: int) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    channels = [
        grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
        for _ in range(max(1, watchers // STREAMS_PER_CHANNEL + 1))
    ]
    driver = f"fan-{watchers}-{time.time_ns()}"
    received: list[dict[int, float]] = [{} for _ in range(watchers)]
    base_ns = time.time_ns() - 60_000_000_000

    calls: list[Any] = []

    async def watch(i: int) -> None:
        stub = pb_grpc.DriverServiceStub(channels[i % len(channels)])
        call = stub.StreamLocation(pb.StreamLocationRequest(driver_id=driver))
        calls.append(call)
        async for loc in call:
            received[i][loc.timestamp.ToNanoseconds()] = time.perf_counter()

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    upload_stub = pb_grpc.DriverServiceStub(channels[0])

    async def upload(n: int) -> tuple[int, float, float]:
        msg = pb.LocationUpdate(driver_id=driver, latitude=52.5, longitude=13.4, speed_mps=5.0)
        msg.timestamp.FromNanoseconds(base_ns + n * 1_000_000)
        sent = time.perf_counter()
        summary = await upload_stub.UploadLocations(iter([msg]), timeout=10)
        assert summary.persisted_count == 1
        return msg.timestamp.ToNanoseconds(), sent, time.perf_counter()

    async def everyone_has(ts: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(ts not in r for r in received):
            if time.monotonic() > deadline:
                missing = sum(ts not in r for r in received)
                raise RuntimeError(f"{missing} of {watchers} watchers never got the update")
            await asyncio.sleep(0.002)

    await asyncio.sleep(0.5 + watchers / 2000)  # let every StreamLocation subscribe
    ts, _, _ = await upload(0)  # primes every watcher: from here on all are subscribed
    await everyone_has(ts)
    after_ack: list[float] = []
    after_send: list[float] = []
    cpu0 = cpu_seconds(pid)
    for n in range(1, rounds + 1):
        ts, sent, acked = await upload(n)
        await everyone_has(ts)
        after_ack += [(r[ts] - acked) * 1000 for r in received]
        after_send += [(r[ts] - sent) * 1000 for r in received]
        await asyncio.sleep(0.02)
    cpu = cpu_seconds(pid) - cpu0
    # Cancelling the calls (not the tasks) ends every stream cleanly on both sides.
    for call in calls:
        call.cancel()
    await asyncio.wait(tasks, timeout=10)
    for ch in channels:
        await ch.close()
    after_ack.sort()
    after_send.sort()
    return {
        "watchers": watchers,
        "rounds": rounds,
        "ack_to_received_p50_ms": percentile(after_ack, 50),
        "ack_to_received_p99_ms": percentile(after_ack, 99),
        "send_to_received_p50_ms": percentile(after_send, 50),
        "send_to_received_p99_ms": percentile(after_send, 99),
        "send_to_received_max_ms": after_send[-1],
        "server_cpu_us_per_delivery": 1e6 * cpu / (rounds * watchers),
    }


#: (results key, bench.servers kind, what the printed line calls it)
SERVERS = (("cases", "full", "ours"), ("floor_cases", "bare", "bare grpc.aio floor"))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the repeats, the p99 spread, and the runs."""
    keys = [k for k in runs[0] if k.endswith("_ms") or k.endswith("_delivery")]
    summary: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    summary["p99_spread_ms"] = [
        min(r["ack_to_received_p99_ms"] for r in runs),
        max(r["ack_to_received_p99_ms"] for r in runs),
    ]
    return {**summary, "runs": runs}


def run(
    workdir: Path,
    *,
    repeats: int = 3,
    rounds: int = 30,
    watcher_counts: tuple[int, ...] = (1, 1000),
) -> dict[str, Any]:
    data = workdir / "fanout-data"
    data.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {key: {} for key, _, _ in SERVERS}
    args = {
        "full": ["--data-dir", str(data), "--keepalive-timeout", str(KEEPALIVE_TIMEOUT_S)],
        "bare": [],
    }
    with contextlib.ExitStack() as stack:
        servers = [
            (key, stack.enter_context(server(kind, *args[kind], workdir=workdir)))
            for key, kind, _ in SERVERS
        ]

        async def every_case() -> dict[tuple[str, int], list[dict[str, Any]]]:
            # One event loop for all of them: grpc.aio's poller stays bound to the first
            # loop of the process, and a second loop leaves it calling a closed one. Ours
            # and the floor take turns, so drift on the shared machine hits both alike.
            measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for watchers in watcher_counts:
                for _ in range(repeats):
                    for key, srv in servers:
                        one = await measure(srv.port, srv.pid, watchers, rounds)
                        measured.setdefault((key, watchers), []).append(one)
            return measured

        measured = run_async(every_case())
    for watchers in watcher_counts:
        line = []
        for key, _, name in SERVERS:
            case = out[key][str(watchers)] = summarize(measured[key, watchers])
            line.append(
                f"    {name}: ack→received p50 {case['ack_to_received_p50_ms']:.2f} ms "
                f"p99 {case['ack_to_received_p99_ms']:.2f} ms, send→received "
                f"p50 {case['send_to_received_p50_ms']:.2f} ms "
                f"p99 {case['send_to_received_p99_ms']:.2f} ms, "
                f"{case['server_cpu_us_per_delivery']:.1f} µs server CPU per delivery"
            )
        print(f"  {watchers} watchers:", *line, sep="\n")
    return out
