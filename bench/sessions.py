"""4. DriverSession: heartbeat round trip with 1,000 concurrent sessions, server memory per
idle session (RSS delta / sessions; 500 sessions per connection, and one connection per
session as driver apps connect in production), and how many sessions one process holds.

The same is measured against the floor: a bare grpc.aio server whose DriverSession only
answers heartbeats (`python -m bench.sessions floor --port P`), so the per-session bytes that
are grpc's own and those that are ours are told apart in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from bench.common import (
    percentile,
    rss_bytes,
    run_async,
    server,
)
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc

#: Channels to one target share a connection unless told not to; each needs its own, since
#: the server allows 1,000 concurrent streams per connection.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
STREAMS_PER_CHANNEL = 500  # under the server's max_concurrent_streams (1000)


class Session:
    """One open DriverSession: send a heartbeat, await its pong."""

    def __init__(self, stub: pb_grpc.DriverServiceStub) -> None:
        self._out: asyncio.Queue[pb.DriverEvent | None] = asyncio.Queue()
        self.call = stub.DriverSession(self._events())

    async def _events(self) -> Any:
        while (event := await self._out.get()) is not None:
            yield event

    async def ping(self) -> float:
        started = time.perf_counter()
        await self._out.put(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
        reply = await self.call.read()
        if reply is grpc.aio.EOF or not reply.HasField("pong"):
            raise RuntimeError(f"no pong: {reply}")
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        await self._out.put(None)
        self.call.cancel()


async def open_sessions(
    target: str, count: int, channels: list[grpc.aio.Channel], own_connections: bool = False
) -> tuple[list[Session], int]:
    """Open `count` sessions (each proven by one heartbeat); return those that answered.
    Sessions share connections, STREAMS_PER_CHANNEL each (`channels` first), or with
    `own_connections` each gets a new connection, as a driver app's session has."""
    if own_connections:
        first = len(channels)
        channels += [
            grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(count)
        ]

        def channel_of(i: int) -> grpc.aio.Channel:
            return channels[first + i]
    else:
        need = count // STREAMS_PER_CHANNEL + 1
        channels += [
            grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
            for _ in range(need - len(channels))
        ]

        def channel_of(i: int) -> grpc.aio.Channel:
            return channels[i // STREAMS_PER_CHANNEL]

    sessions: list[Session] = []
    failed = 0
    batch = 250
    for start in range(0, count, batch):
        opened = [
            Session(pb_grpc.DriverServiceStub(channel_of(start + i)))
            for i in range(min(batch, count - start))
        ]
        results = await asyncio.gather(*(s.ping() for s in opened), return_exceptions=True)
        for s, r in zip(opened, results, strict=True):
            if isinstance(r, BaseException):
                failed += 1
            else:
                sessions.append(s)
    return sessions, failed


async def measure(
    port: int, pid: int, sessions_n: int, rounds: int, max_sessions: int
) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    channels: list[grpc.aio.Channel] = []
    warm, _ = await open_sessions(target, 50, channels)  # connections and code paths warm
    for s in warm:
        await s.close()
    await asyncio.sleep(0.5)
    gc.collect()
    rss0 = rss_bytes(pid)
    sessions, failed = await open_sessions(target, sessions_n, channels)
    await asyncio.sleep(1.0)
    rss1 = rss_bytes(pid)
    rtts: list[float] = []
    for _ in range(rounds):
        rtts += await asyncio.gather(*(s.ping() for s in sessions))
    rtts.sort()
    result: dict[str, Any] = {
        "sessions": len(sessions),
        "failed": failed,
        "heartbeat_rtt_p50_ms": percentile(rtts, 50),
        "heartbeat_rtt_p99_ms": percentile(rtts, 99),
        "heartbeat_rtt_max_ms": rtts[-1],
        "rounds": rounds,
        "bytes_per_idle_session": (rss1 - rss0) / max(1, len(sessions)),
    }
    more, failed_more = await open_sessions(target, max_sessions - len(sessions), channels)
    held = len(sessions) + len(more)
    await asyncio.sleep(1.0)
    rss2 = rss_bytes(pid)
    # All of them still answer: the server holds them, not just accepted them.
    alive = await asyncio.gather(*(s.ping() for s in sessions + more), return_exceptions=True)
    result.update(
        tried=max_sessions,
        held=held,
        failed_to_open=failed_more + failed,
        answered_after=sum(not isinstance(a, BaseException) for a in alive),
        server_rss_mb_at_max=rss2 / 2**20,
        bytes_per_session_at_max=(rss2 - rss0) / max(1, held),
    )
    for s in sessions + more:
        await s.close()
    for ch in channels:
        await ch.close()
    return result


async def measure_own_connections(port: int, pid: int, sessions_n: int) -> float:
    """Server bytes per idle session when every session has a connection of its own, as
    every driver app has in production (one phone, one connection)."""
    target = f"127.0.0.1:{port}"
    channels: list[grpc.aio.Channel] = []
    warm, _ = await open_sessions(target, 50, channels)
    for s in warm:
        await s.close()
    await asyncio.sleep(0.5)
    gc.collect()
    rss0 = rss_bytes(pid)
    sessions, _ = await open_sessions(target, sessions_n, channels, own_connections=True)
    await asyncio.sleep(1.0)
    per_session = (rss_bytes(pid) - rss0) / max(1, len(sessions))
    for s in sessions:
        await s.close()
    for ch in channels:
        await ch.close()
    return per_session


def run(
    workdir: Path,
    *,
    repeats: int = 3,
    sessions: int = 1000,
    rounds: int = 5,
    max_sessions: int = 10_000,
) -> dict[str, Any]:
    data = workdir / "sessions-data"
    data.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    own: dict[str, list[float]] = {"ours": [], "floor": []}
    ours_args = ["full", "--data-dir", str(data)]

    async def every_run() -> None:
        # One event loop for all of them: grpc.aio's poller stays bound to the first loop of
        # the process, and a second loop leaves it calling a closed one.
        for _ in range(repeats):  # a fresh server each time: RSS deltas from the same start
            with server(*ours_args, workdir=workdir) as srv:
                runs.append(await measure(srv.port, srv.pid, sessions, rounds, max_sessions))
            with server("floor", workdir=workdir, module="bench.sessions") as srv:
                floors.append(await measure(srv.port, srv.pid, sessions, rounds, max_sessions))
            with server(*ours_args, workdir=workdir) as srv:
                own["ours"].append(await measure_own_connections(srv.port, srv.pid, sessions))
            with server("floor", workdir=workdir, module="bench.sessions") as srv:
                own["floor"].append(await measure_own_connections(srv.port, srv.pid, sessions))

    run_async(every_run())
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    summary = {k: statistics.median(r[k] for r in runs) for k in keys}
    for key in ("bytes_per_idle_session", "bytes_per_session_at_max"):
        summary[f"floor_{key}"] = statistics.median(r[key] for r in floors)
    summary["bytes_per_session_own_connection"] = statistics.median(own["ours"])
    summary["floor_bytes_per_session_own_connection"] = statistics.median(own["floor"])
    print(
        f"  {sessions} sessions: rtt p50 {summary['heartbeat_rtt_p50_ms']:.1f} ms p99 "
        f"{summary['heartbeat_rtt_p99_ms']:.1f} ms; "
        f"{summary['bytes_per_idle_session'] / 1024:.1f} KiB/idle session "
        f"(bare grpc.aio: {summary['floor_bytes_per_idle_session'] / 1024:.1f} KiB); "
        f"held {summary['held']:.0f} of {max_sessions}; a connection per session: "
        f"{summary['bytes_per_session_own_connection'] / 1024:.1f} KiB "
        f"(bare: {summary['floor_bytes_per_session_own_connection'] / 1024:.1f} KiB)"
    )
    return {**summary, "runs": runs, "floor_runs": floors}


class FloorServicer(pb_grpc.DriverServiceServicer):
    """The floor of a session: grpc.aio's own cost of an idle bidi stream whose handler is
    an async generator (as ours is), answering heartbeats and nothing else."""

    async def DriverSession(  # noqa: N802 - generated method name
        self, request_iterator: AsyncIterator[pb.DriverEvent], context: Any
    ) -> AsyncIterator[pb.ServerCommand]:
        async for event in request_iterator:
            if event.WhichOneof("event") == "heartbeat":
                yield pb.ServerCommand(pong=pb.PingResponse(server_ts_ms=time.time_ns() // 10**6))


async def serve_floor(port: int) -> None:
    from driver_service.server.config import ServerSettings
    from driver_service.server.running import server_options

    settings = ServerSettings(listen=f"127.0.0.1:{port}", insecure=True)
    srv = grpc.aio.server(options=server_options(settings))  # the same limits as ours
    pb_grpc.add_DriverServiceServicer_to_server(FloorServicer(), srv)
    srv.add_insecure_port(settings.listen)
    await srv.start()
    from bench.servers import until_terminated

    await until_terminated()
    await srv.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description="the bare grpc.aio DriverSession server")
    parser.add_argument("kind", choices=["floor"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from driver_service.cli.serve_command import run_loop

    run_loop(serve_floor(args.port))


if __name__ == "__main__":
    main()
