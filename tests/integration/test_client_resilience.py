"""The client survives servers going away, against real servers on real sockets: calls spread
over every address (round_robin), GetDriver retried by grpc's service-config policy, watch()
reconnecting across a restart on the same port, upload() resending what was not acknowledged.

Servers are built exactly as production builds them; a restart stops one (grace 0, so calls
in flight are cut) and starts a new one on the same port and the same data directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.app.tracking import DriverTracking
from driver_service.app.upload import Upload
from driver_service.client import (
    Backoff,
    DriverClient,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from driver_service.domain import Driver, Location, StoreUnavailable
from driver_service.server.composition import build_tracking
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server
from tests.helpers.waiting import eventually

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 3600) * NANOS
GET_DRIVER = "GetDriver"
STREAM_LOCATION = "StreamLocation"
UPLOAD_LOCATIONS = "UploadLocations"
#: No admin listener: its default port would clash between replicas and with tests running
#: in parallel.
NO_SIDE_LISTENERS = {"admin_listen": ""}


class CallLog:
    """Counts the calls a server's service receives (every attempt of a retried call is one
    call) by wrapping its DriverTracking, and can fail the next `fail_next` GetDriver calls
    the way a failing store does (StoreUnavailable: the server answers UNAVAILABLE)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_next = 0

    def attach(self, tracking: DriverTracking) -> None:
        get_driver, watch, new_upload = tracking.get_driver, tracking.watch, tracking.new_upload

        async def counted_get_driver(driver_id: str) -> Driver:
            self.calls[GET_DRIVER] += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                raise StoreUnavailable("injected: driver store is unavailable")
            return await get_driver(driver_id)

        def counted_watch(driver_id: str) -> AsyncIterator[Location]:
            self.calls[STREAM_LOCATION] += 1
            return watch(driver_id)

        def counted_new_upload() -> Upload:
            self.calls[UPLOAD_LOCATIONS] += 1
            return new_upload()

        tracking.get_driver = counted_get_driver  # type: ignore[method-assign]
        # GetDriver's no-wait path would answer without `get_driver`: every call goes through
        # it here, so each attempt is counted and an injected failure is seen.
        tracking.current_driver = lambda driver_id: None  # type: ignore[method-assign]
        tracking.watch = counted_watch  # type: ignore[method-assign]
        tracking.new_upload = counted_new_upload  # type: ignore[method-assign]


@dataclass
class Replica:
    """One server process's worth of driver-service, restartable on the same port."""

    data_dir: Path
    log: CallLog = field(default_factory=CallLog)
    running: RunningServer | None = None
    port: int = 0

    async def start(self) -> None:
        settings = ServerSettings(
            listen=f"127.0.0.1:{self.port}",
            data_dir=self.data_dir,
            insecure=True,
            **NO_SIDE_LISTENERS,
        )
        tracking = await build_tracking(settings)
        self.log.attach(tracking)
        self.running = await start_server(settings, tracking)
        self.port = self.running.port

    async def stop(self) -> None:
        if self.running is not None:
            running, self.running = self.running, None
            await running.stop(0)

    @property
    def tracking(self) -> Any:
        assert self.running is not None
        return self.running.tracking

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def history_rows(self) -> int:
        """Rows in the stopped replica's SQLite history (read straight from the file)."""
        assert self.running is None, "stop the replica before reading its file"
        settings = ServerSettings(data_dir=self.data_dir, insecure=True)
        with contextlib.closing(sqlite3.connect(settings.sqlite_path())) as con:
            (count,) = con.execute("SELECT COUNT(*) FROM location_history").fetchone()
        return int(count)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[Replica]]]:
    started: list[Replica] = []

    async def new() -> Replica:
        replica = Replica(tmp_path / f"replica-{len(started)}")
        replica.data_dir.mkdir()
        await replica.start()
        started.append(replica)
        return replica

    try:
        yield new
    finally:
        for replica in started:
            await replica.stop()


def loc(driver_id: str, i: int, ns: int | None = None) -> Location:
    return Location(
        driver_id, 10.0 + i / 1000, 20.0 + i / 1000, 5.0, 90.0, BASE_NS + i if ns is None else ns
    )


async def test_round_robin_spreads_get_driver_over_both_servers(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    a, b = await replicas(), await replicas()
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    async with DriverClient(target) as client:
        for _ in range(20):
            with pytest.raises(NotFound):
                await client.get_driver("nobody", wait_for_ready=True)
    got = (a.log.calls[GET_DRIVER], b.log.calls[GET_DRIVER])
    assert sum(got) == 20
    assert min(got) >= 5, f"calls per server {got}: not spread over both"

    # The same target under grpc's default policy (pick_first) uses one server only: the
    # client's default is what spreads the load.
    pick_first = json.dumps({"loadBalancingConfig": [{"pick_first": {}}]})
    async with DriverClient(target, options=[("grpc.service_config", pick_first)]) as client:
        for _ in range(20):
            with pytest.raises(NotFound):
                await client.get_driver("nobody", wait_for_ready=True)
    after = (a.log.calls[GET_DRIVER] - got[0], b.log.calls[GET_DRIVER] - got[1])
    assert sorted(after) == [0, 20]


@contextlib.asynccontextmanager
async def flaky_get_driver(failures: list[int]) -> AsyncIterator[tuple[str, list[str]]]:
    """A bare grpc.aio server whose GetDriver answers UNAVAILABLE `failures[0]` times, then
    NOT_FOUND. driver-service's streams send response headers (a caller's request id) before
    their answer, which commits a call in grpc's retry logic; this server answers trailers-only,
    as a server does when it fails before any handler runs, so the client's retry policy is
    what is measured. Yields the target and the log of attempts."""
    attempts: list[str] = []

    async def get_driver(request: pb.GetDriverRequest, context: Any) -> pb.GetDriverResponse:
        attempts.append(request.driver_id)
        if failures[0] > 0:
            failures[0] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: overloaded")
        await context.abort(grpc.StatusCode.NOT_FOUND, f"driver {request.driver_id!r}")
        raise AssertionError("unreachable")

    handler = grpc.method_handlers_generic_handler(
        "driver.v1.DriverService",
        {
            "GetDriver": grpc.unary_unary_rpc_method_handler(
                get_driver,
                request_deserializer=pb.GetDriverRequest.FromString,
                response_serializer=pb.GetDriverResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", attempts
    finally:
        await server.stop(0)


async def test_get_driver_is_retried_on_unavailable_up_to_four_attempts() -> None:
    failures = [3]
    async with flaky_get_driver(failures) as (target, attempts), DriverClient(target) as client:
        started = time.monotonic()
        with pytest.raises(NotFound):  # the 4th attempt got the real answer
            await client.get_driver("d1")
        took = time.monotonic() - started
        assert attempts == ["d1"] * 4
        # Backoffs are random in [0, 0.1], [0, 0.2], [0, 0.4] s.
        assert took < 0.7 + 0.3, took

        failures[0] = 4
        with pytest.raises(Unavailable, match="injected"):
            await client.get_driver("d2")
        assert attempts[4:] == ["d2"] * 4  # maxAttempts 4: then the error is the caller's

        with pytest.raises(NotFound):  # an answer, not a failure: never retried
            await client.get_driver("d3")
        assert attempts[8:] == ["d3"]


async def test_get_driver_calls_during_a_restart_on_the_same_port_succeed(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    server = await replicas()
    async with DriverClient(server.target) as client:
        await client.upload([loc("rs-1", 1)])
        assert (await client.get_driver("rs-1")).latitude == loc("rs-1", 1).latitude

        await server.stop()
        # Calls made while no server listens, completed once the new one is up.
        calls = [asyncio.create_task(client.get_driver("rs-1")) for _ in range(5)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await server.start()
        snaps = await asyncio.gather(*calls)
        took = time.monotonic() - started
    assert {s.latitude for s in snaps} == {loc("rs-1", 1).latitude}
    assert server.log.calls[GET_DRIVER] >= 6
    print(f"GetDriver calls made during the gap answered {took * 1000:.0f} ms after restart")


async def test_watch_continues_across_a_restart_without_duplicates_or_older_locations(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    server = await replicas()
    async with DriverClient(server.target) as client:
        await client.upload([loc("w-1", 1)])
        seen: list[Location] = []
        got = asyncio.Event()

        async def follow() -> None:
            async for location in client.watch("w-1"):
                seen.append(location)
                got.set()

        watcher = asyncio.create_task(follow())
        await eventually(lambda: len(seen) == 1, what="the latest location on subscribe")
        await server.stop()
        await asyncio.sleep(0.3)  # the watcher fails and retries against a closed port
        assert not watcher.done()
        await server.start()
        # Reconnected: the new server sent its latest (1) at once, which is not yielded again.
        await eventually(lambda: server.tracking.bus.watcher_count() == 1, what="reconnect")
        await client.upload([loc("w-1", 0)])  # older: the watcher must not see it
        await client.upload([loc("w-1", 2)])
        await eventually(lambda: len(seen) >= 2, what="the first location after restart")
        await client.upload([loc("w-1", 3)])
        await eventually(lambda: len(seen) >= 3, what="the second location after restart")
        await asyncio.sleep(0.1)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert seen == [loc("w-1", 1), loc("w-1", 2), loc("w-1", 3)]


async def test_watch_gives_up_at_once_on_a_code_a_retry_cannot_fix(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    server = await replicas()
    async with DriverClient(server.target) as client:
        started = time.monotonic()
        with pytest.raises(InvalidArgument):
            await anext(client.watch("not a valid id!"))
        assert time.monotonic() - started < 1
    assert server.log.calls[STREAM_LOCATION] == 1


async def test_watch_gives_up_after_max_attempts_when_no_server_returns(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    server = await replicas()
    await server.stop()
    backoff = Backoff(initial=0.01, maximum=0.05, max_attempts=3)
    async with DriverClient(server.target) as client:
        with pytest.raises(Unavailable):
            await asyncio.wait_for(anext(client.watch("w-2", backoff=backoff)), 10)


async def test_upload_resends_only_the_unacknowledged_chunk_across_a_restart(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    server = await replicas()
    total, cut_at = 5_000, 2_500  # the cut falls in the middle of the third chunk of 1,000
    reached, resume = asyncio.Event(), asyncio.Event()

    async def updates() -> AsyncIterator[Location]:
        for i in range(total):
            if i == cut_at:
                reached.set()
                await resume.wait()
            yield loc("up-1", i)

    async with DriverClient(server.target) as client:
        upload = asyncio.create_task(client.upload(updates()))
        await asyncio.wait_for(reached.wait(), 10)
        await asyncio.sleep(0.1)  # let the server take in part of the third chunk
        await server.stop()
        stored_before_restart = server.history_rows()
        resume.set()  # the client now fails to send, and retries against a closed port
        await asyncio.sleep(0.3)
        await server.start()
        report = await asyncio.wait_for(upload, 30)
        newest = await client.get_driver("up-1")
    await server.stop()

    assert (report.received_count, report.persisted_count) == (total, total)
    assert report.chunks == 5
    assert report.retries >= 1
    # Part of the cut chunk was stored before the cut, and was sent again: no duplicates.
    assert 2_000 < stored_before_restart <= cut_at, stored_before_restart
    assert server.history_rows() == total
    assert newest.latitude == loc("up-1", total - 1).latitude
    print(
        f"stored before restart {stored_before_restart}, retries {report.retries}, "
        f"chunks {report.chunks}"
    )


async def test_upload_sends_one_call_per_chunk_and_none_past_the_end(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    server = await replicas()
    async with DriverClient(server.target) as client:
        report = await client.upload((loc("ch-1", i) for i in range(2_000)), chunk_size=1_000)
        assert (report.received_count, report.persisted_count) == (2_000, 2_000)
        assert (report.chunks, report.retries) == (2, 0)
        assert (
            server.log.calls[UPLOAD_LOCATIONS] == 2
        )  # input ending on a boundary opens no 3rd call

        # Invalid updates are counted, not persisted, and not resent: the chunk was answered.
        bad = Location("ch-2", 91.0, 0.0, 0.0, 0.0, BASE_NS)
        report = await client.upload([loc("ch-2", 1), bad])
        assert (report.received_count, report.persisted_count, report.retries) == (2, 1, 0)

        report = await client.upload([])  # one call, for the server's zero counts
        assert (report.received_count, report.persisted_count, report.chunks) == (0, 0, 1)
        assert report.session_id.startswith("upl-")
    assert server.log.calls[UPLOAD_LOCATIONS] == 4


async def test_get_driver_answered_unavailable_by_the_service_is_retried(
    replicas: Callable[[], Awaitable[Replica]],
) -> None:
    """The store failing (UNAVAILABLE from the handler, not the transport) is retried too:
    the server sends no headers before a unary call fails, so the call stays retryable."""
    replica = await replicas()
    async with DriverClient(replica.target) as client:
        await client.upload([loc("retry-1", 1)])
        replica.log.fail_next = 2
        driver = await client.get_driver("retry-1")
    assert driver.driver_id == "retry-1"
    assert replica.log.calls[GET_DRIVER] == 3
