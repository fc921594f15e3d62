"""Server-Sent Events over HTTPS: the event feed resumes with Last-Event-ID without a gap or
a duplicate, heartbeats keep an idle stream open, live locations arrive, shutdown ends them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.http_server import HttpFixture, http_server


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[HttpFixture]:
    async with http_server(tmp_path, http_heartbeat=0.2) as fixture:
        yield fixture


async def frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each SSE block as {"id", "event", "data"} or {"comment": text}."""
    block: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if block:
                yield block
            block = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            key, _, value = line.partition(": ")
            block[key] = json.loads(value) if key == "data" else value


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
    door: HttpFixture,
) -> None:
    async with door.client(door.token()) as http:
        await upload(http, "drv-l", 52.5)
        got: list[dict[str, Any]] = []

        async def read() -> None:
            async with http.stream("GET", "/v1/drivers/drv-l/locations:stream") as r:
                assert r.status_code == 200
                async for frame in frames(r):
                    got.append(frame)  # noqa: PERF401 - read as they come, by the test

        reader = asyncio.create_task(read())
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
        assert got[-1].get("event") == "end"
