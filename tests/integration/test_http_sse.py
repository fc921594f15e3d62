"""Server-Sent Events over HTTPS: the event feed resumes with Last-Event-ID without a gap or
a duplicate, heartbeats keep an idle stream open, live locations arrive, shutdown ends them."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from driver_service.http.sse import DropOldest
from tests.helpers.http_server import HttpFixture, http_server, sse_frames


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[HttpFixture]:
    async with http_server(tmp_path, http_heartbeat=0.2) as fixture:
        yield fixture


frames = sse_frames


async def upload(http: httpx.AsyncClient, driver_id: str, lat: float) -> None:
    r = await http.post(
        f"/v1/drivers/{driver_id}:uploadLocations",
        json={"locations": [{"latitude": lat, "longitude": 13.4}]},
    )
    assert r.status_code == 200, r.text


async def test_event_feed_resumes_with_last_event_id_without_gaps_or_duplicates(
    door: HttpFixture,
) -> None:
    async with door.client(door.token()) as http:
        for i in range(6):
            await upload(http, f"drv-e{i}", 52.5)  # driver.online each
        seen: list[int] = []
        async with http.stream("GET", "/v1/events:stream", params={"after_id": 0}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for frame in frames(r):
                if frame.get("event") == "event":
                    assert int(frame["id"]) == int(frame["data"]["id"])
                    seen.append(int(frame["id"]))
                if len(seen) == 3:
                    break
        for i in range(6, 9):
            await upload(http, f"drv-e{i}", 52.5)
        headers = {"last-event-id": str(seen[-1])}
        async with http.stream("GET", "/v1/events:stream", headers=headers) as r:
            async for frame in frames(r):
                if frame.get("event") == "event":
                    seen.append(int(frame["id"]))
                if len(seen) == 9:
                    break
        assert seen == list(range(1, 10))
        r = await http.get("/v1/events:stream", headers={"last-event-id": "x"})
        assert r.status_code == 400
        r = await http.get("/v1/events:stream", params={"types": "nonsense.*"})
        assert r.status_code == 400


async def test_heartbeats_then_live_locations_then_shutdown_ends_the_streams(
    door: HttpFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """As gRPC's streams: each ends at once saying so (`event: end`), and the stop does not
    wait out its grace for clients that keep their (TLS) connections open."""
    async with door.client(door.token()) as http:
        await upload(http, "drv-l", 52.5)
        got: list[dict[str, Any]] = []
        feed: list[dict[str, Any]] = []

        async def read(path: str, into: list[dict[str, Any]]) -> None:
            async with http.stream("GET", path) as r:
                assert r.status_code == 200
                async for frame in frames(r):
                    into.append(frame)  # noqa: PERF401 - read as they come, by the test

        reader = asyncio.create_task(read("/v1/drivers/drv-l/locations:stream", got))
        events_reader = asyncio.create_task(read("/v1/events:stream", feed))
        await asyncio.sleep(0.7)
        assert any(f.get("comment") == "heartbeat" for f in got)
        events = [f for f in got if "event" in f]
        assert events[0]["event"] == "location"  # the latest known location at once
        await upload(http, "drv-l", 52.6)
        deadline = time.monotonic() + 2
        while not any(f.get("data", {}).get("latitude") == 52.6 for f in got):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await door.stop(5)
        await asyncio.wait_for(reader, 5)  # ended by the server, not cut
        await asyncio.wait_for(events_reader, 5)
        assert got[-1].get("event") == "end"
        assert feed[-1] == {"event": "end", "data": {"reason": "server shutting down"}}
    assert "graceful shutdown exceeded" not in caplog.text


class StallingReader:
    """An SSE request over HTTPS whose reader reads only when told. Its socket holds little
    (a small receive buffer and segment size), and the server's side of it gets a small send
    buffer: on loopback the kernel would otherwise take ~2,000 frames before pushing back,
    where on a slow mobile link it is the network that does."""

    def __init__(self, door: HttpFixture, token: str, path: str) -> None:
        port = int(door.base_url.rsplit(":", 1)[1])
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port))
        context = ssl.create_default_context(cafile=str(door.certs.ca_cert))
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        request = f"GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n"
        self.sock.sendall(request.encode())
        self.local = self.sock.getsockname()
        self.text = ""

    def server_side(self, door: HttpFixture) -> Any:
        assert door.running.http is not None
        for conn in door.running.http.server.server_state.connections:
            if conn.transport.get_extra_info("peername") == self.local:
                return conn
        raise AssertionError("no server connection for the stalling reader")

    def shrink_server_buffer(self, door: HttpFixture) -> None:
        peer = self.server_side(door).transport.get_extra_info("socket")
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def read_until(self, pattern: str, count: int = 1) -> list[str]:
        """Read until `pattern` (a regex with one group) matched `count` times in all read."""
        while len(found := re.findall(pattern, self.text, re.MULTILINE)) < count:
            data = await asyncio.to_thread(self.sock.recv, 65536)
            assert data, f"the server closed the stream after {found[-3:]} ({len(found)})"
            self.text += data.decode(errors="replace")
        return found

    def close(self) -> None:
        self.sock.close()


def live_buffers() -> list[DropOldest]:
    return [o for o in gc.get_objects() if isinstance(o, DropOldest)]


async def timed_uploads(http: httpx.AsyncClient, driver_id: str, lats: list[float]) -> float:
    t0 = time.monotonic()
    for lat in lats:
        await upload(http, driver_id, lat)
    return time.monotonic() - t0


LATITUDE = r'^data: \{"driverId":"drv-slow","latitude":([0-9.]+)'
UPDATES = 1_000  # ~185 KB of location frames: twice what the sockets hold once shrunk


async def stall_while_moving(
    http: httpx.AsyncClient, reader: StallingReader, driver_id: str, pattern: str, baseline: float
) -> tuple[list[float], float]:
    """Move `driver_id` UPDATES times while `reader` does not read; check ingestion kept its
    pace (`baseline`: 100 uploads' time); then read until the newest. Returns every latitude
    `pattern` found in the stream, and the newest sent."""
    lats = [50.0 + (i + 1) * 1e-5 for i in range(UPDATES)]
    stalled = await timed_uploads(http, driver_id, lats)
    # Ingestion did not wait for the reader: about as fast per update as before.
    assert stalled / UPDATES < 3 * baseline / 100 + 0.005, (stalled, baseline)
    # The newest fix acknowledged (an upload answers after its commit); a commit publishes
    # each driver's newest fix, so wait for one at least as new.
    seen: list[str] = []
    while not seen or float(seen[-1]) < lats[-1]:
        seen = await reader.read_until(pattern, len(seen) + 1)
    return [float(x) for x in seen], lats[-1]


async def test_slow_reader_of_live_locations_gets_the_newest_and_never_slows_ingestion(
    door: HttpFixture,
) -> None:
    """A reader that stops reading while its driver moves 1,000 times: ingestion keeps its pace,
    the server keeps at most 16 locations for it (the oldest dropped), and when it reads again
    the newest location comes after no more than what was already in the sockets."""
    token = door.token()
    step = 1e-5
    async with door.client(token) as http:
        await upload(http, "drv-slow", 50.0)
        baseline = await timed_uploads(http, "drv-base", [50.0 + i * step for i in range(100)])
        reader = await asyncio.to_thread(
            StallingReader, door, token, "/v1/drivers/drv-slow/locations:stream"
        )
        try:
            assert await reader.read_until(LATITUDE) == ["50.0"]
            reader.shrink_server_buffer(door)
            seen, newest = await stall_while_moving(http, reader, "drv-slow", LATITUDE, baseline)
        finally:
            reader.close()
    received = seen[1:]
    assert received == sorted(received)  # in order, oldest first
    assert received[-1] == newest
    # What the sockets held when they pushed back, then the 16 buffered: not all 1,000.
    assert len(received) < UPDATES * 3 // 4, len(received)
    buffer = max(live_buffers(), key=lambda b: b.dropped)  # this test's stream
    assert buffer.dropped > UPDATES // 4, "the stream never backed up into the server"
    assert len(buffer._items) <= 16  # bounded: the server's memory does not grow


async def test_slow_reader_of_the_event_feed_misses_no_event(door: HttpFixture) -> None:
    """The event feed is never thinned: a reader that stops while 1,200 events happen (far
    more than the sockets hold) then reads every one of them, in order, without a gap."""
    token = door.token()
    count = 1_200
    async with door.client(token) as http:
        await upload(http, "drv-ev-first", 50.0)
        reader = await asyncio.to_thread(
            StallingReader, door, token, "/v1/events:stream?after_id=0"
        )
        try:
            (first,) = await reader.read_until(r"^id: (\d+)")
            reader.shrink_server_buffer(door)
            for start in range(0, count, 200):  # a driver.online event for each new driver
                batch = [
                    {"driverId": f"drv-ev-{n:05d}", "latitude": 50.0, "longitude": 13.4}
                    for n in range(start, start + 200)
                ]
                reply = await http.post("/v1/locations:batchUpload", json={"locations": batch})
                assert reply.status_code == 200, reply.text
            await asyncio.sleep(2)  # the feed has caught up with the log by then
            backed_up = reader.server_side(door).flow.write_paused
            ids = await reader.read_until(r"^id: (\d+)", count + 1)
        finally:
            reader.close()
    assert [int(i) for i in ids] == list(range(int(first), int(first) + count + 1))
    assert backed_up, "the feed never backed up into the server"


async def test_a_resume_past_the_retained_log_is_out_of_range_as_over_grpc(
    door: HttpFixture,
) -> None:
    """OUT_OF_RANGE (400) with gRPC's message saying the oldest id still there: a client
    that resumes too late learns it lost events instead of silently skipping them."""
    from driver_service._gen.driver.v1 import events_pb2 as epb
    from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc
    from driver_service.app.events import EventRetention

    token = door.token()
    async with door.client(token) as http:
        for i in range(4):
            await upload(http, f"drv-x{i}", 52.5)  # a driver.online each: ids 1 to 4
        assert door.running.services is not None
        log = door.running.services.events._log  # the durable log (a test reaches in)
        later = time.time_ns() + 10**12
        assert await EventRetention(log, 1, clock_ns=lambda: later).expire_once() == 3
        async with door.channel() as channel:
            stream = epb_grpc.EventServiceStub(channel).WatchEvents(
                epb.WatchEventsRequest(after_id=1), metadata=door.metadata(token)
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.read()
        assert refused.value.code() is grpc.StatusCode.OUT_OF_RANGE
        r = await http.get("/v1/events:stream", headers={"last-event-id": "1"})
        body = r.json()["error"]
        assert (r.status_code, body["status"], body["message"]) == (
            400, "OUT_OF_RANGE", refused.value.details()
        )  # fmt: skip


FLEET_LATITUDE = r'"driverId":"drv-slow-map","latitude":([0-9.]+)'


async def test_slow_reader_of_the_fleet_stream_gets_each_drivers_newest(
    door: HttpFixture,
) -> None:
    """A map that stops reading while a driver moves 1,000 times: ingestion keeps its pace,
    the server keeps one position per driver for it (the bus coalesces), and when it reads
    again the newest comes after no more than what the sockets already held."""
    token = door.token()
    step = 1e-5
    async with door.client(token) as http:
        await upload(http, "drv-slow-map", 50.0)
        baseline = await timed_uploads(http, "drv-base", [50.0 + i * step for i in range(100)])
        reader = await asyncio.to_thread(StallingReader, door, token, "/v1/fleet:stream")
        try:
            await reader.read_until(r"^event: (ready)")
            reader.shrink_server_buffer(door)
            received, newest = await stall_while_moving(
                http, reader, "drv-slow-map", FLEET_LATITUDE, baseline
            )
        finally:
            reader.close()
    assert received == sorted(received)
    assert received[-1] == newest
    assert len(received) < UPDATES * 3 // 4, len(received)
