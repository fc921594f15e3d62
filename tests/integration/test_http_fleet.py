"""The fleet over real HTTPS: GET /v1/drivers lists every driver (OFFLINE and stale ones
too, past any search limit) in pages with a page token, and /v1/fleet:stream carries every
driver's moves and status changes (OFFLINE included) live; neither is open to a driver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driver_service.app.fanout import MemoryBus
from driver_service.app.fleet import MAX_PAGE_SIZE, encode_page_token
from driver_service.security.tokens import SCOPE_DISPATCH, SCOPE_READ
from tests.helpers.http_server import HttpFixture, http_server, sse_frames


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[HttpFixture]:
    async with http_server(tmp_path, http_heartbeat=0.2, stale_after=1.0) as fixture:
        yield fixture


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["status"]


async def _list_all(http: httpx.AsyncClient, page_size: int) -> tuple[list[dict], list[int]]:
    drivers: list[dict] = []
    sizes: list[int] = []
    token = ""
    while True:
        params: dict[str, Any] = {"page_size": page_size}
        if token:
            params["page_token"] = token
        r = await http.get("/v1/drivers", params=params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        drivers += body["drivers"]
        sizes.append(len(body["drivers"]))
        token = body["nextPageToken"]
        if not token:
            return drivers, sizes


@pytest.fixture
async def patient_door(tmp_path: Path) -> AsyncIterator[HttpFixture]:
    """The default --stale-after (120 s): a fresh driver stays fresh however slow the run."""
    async with http_server(tmp_path) as fixture:
        yield fixture


async def test_the_listing_pages_every_driver_offline_and_stale_ones_too(
    patient_door: HttpFixture,
) -> None:
    door = patient_door
    now = time.time()
    ids = [f"drv-{i:04d}" for i in range(1203)]  # more than a nearby search returns (1,000)
    async with door.client(door.token()) as http:
        batch = [{"driverId": d, "latitude": 52.5, "longitude": 13.4} for d in ids]
        r = await http.post("/v1/locations:batchUpload", json={"locations": batch})
        assert r.json()["persistedCount"] == len(ids), r.text
        r = await http.post("/v1/drivers/drv-0007:setStatus", json={"newStatus": "OFFLINE"})
        assert r.status_code == 200, r.text
        old = {"latitude": 52.4, "longitude": 13.3, "timestamp": _rfc3339(now - 600)}
        r = await http.post("/v1/drivers/old:timer:uploadLocations", json={"locations": [old]})
        assert r.status_code == 200, r.text

        drivers, sizes = await _list_all(http, 500)
        assert sizes == [500, 500, 204]
        assert [d["driverId"] for d in drivers] == sorted([*ids, "old:timer"])
        by_id = {d["driverId"]: d for d in drivers}
        assert by_id["drv-0007"]["status"] == "OFFLINE"
        assert by_id["old:timer"]["stale"] is True  # silent for longer than --stale-after
        assert by_id["drv-0008"]["stale"] is False
        assert set(by_id["drv-0008"]) == {
            "driverId", "status", "latitude", "longitude", "lastSeenAt", "stale", "locatedAt"
        }  # fmt: skip
        one = (await http.get(f"/v1/drivers/{'drv-0008'}")).json()
        assert {
            k: v for k, v in by_id["drv-0008"].items() if k not in ("stale", "locatedAt")
        } == one
        assert by_id["old:timer"]["locatedAt"] == _rfc3339(now - 600)

        _, sizes = await _list_all(http, 10 * MAX_PAGE_SIZE)  # bounded: capped, not refused
        assert sizes == [MAX_PAGE_SIZE, 1204 - MAX_PAGE_SIZE]
        r = await http.get("/v1/drivers", params={"pageSize": 2, "pageToken": ""})
        assert [d["driverId"] for d in r.json()["drivers"]] == ["drv-0000", "drv-0001"]
        r = await http.get("/v1/drivers", params={"page_token": encode_page_token("drv-1201")})
        assert [d["driverId"] for d in r.json()["drivers"]] == ["drv-1202", "old:timer"]
        assert r.json()["nextPageToken"] == ""

        for params in (
            {"page_token": "not-a-token"},
            {"page_token": encode_page_token("bad id!")},
            {"page_size": -1},
            {"page_size": "many"},
            {"colour": "red"},
            {"page_size": [1, 2]},
        ):
            r = await http.get("/v1/drivers", params=params)
            assert _error(r) == (400, "INVALID_ARGUMENT"), (params, r.text)


async def test_who_may_list_and_follow_the_fleet(door: HttpFixture) -> None:
    """Ruled in api/rules.py HTTP_RULES: drivers:read; never a driver token, even its own."""
    async with door.client(door.token()) as http:
        r = await http.post("/v1/drivers/drv-a:uploadLocations", json={"locations": [
            {"latitude": 52.5, "longitude": 13.4}]})  # fmt: skip
        assert r.status_code == 200
    cases = {
        door.token([SCOPE_READ]): 200,
        door.token([SCOPE_DISPATCH]): 403,
        door.driver_token("drv-a"): 403,
        None: 401,
    }
    for token, status in cases.items():
        async with door.client(token) as http:
            assert (await http.get("/v1/drivers")).status_code == status
            async with http.stream("GET", "/v1/fleet:stream") as r:
                assert r.status_code == status


async def _collect(response: httpx.Response, got: list[dict[str, Any]]) -> None:
    async for frame in sse_frames(response):
        got.append(frame)  # noqa: PERF401 - read as they come, by the test


async def _until(got: list[dict[str, Any]], what: str, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        for frame in got:
            if check(frame):
                return frame
        assert time.monotonic() < deadline, f"{what} not seen in {got[-5:]}"
        await asyncio.sleep(0.02)


def _located(driver_id: str, lat: float) -> Any:
    def check(frame: dict[str, Any]) -> bool:
        return frame.get("event") == "locations" and any(
            x["driverId"] == driver_id and x["latitude"] == lat for x in frame["data"]["locations"]
        )

    return check


def _event(type_: str, driver_id: str, **fields: Any) -> Any:
    def check(frame: dict[str, Any]) -> bool:
        data = frame.get("data", {})
        return (
            frame.get("event") == "event"
            and data.get("type") == type_
            and data.get("driverId") == driver_id
            and all(data.get(k) == v for k, v in fields.items())
        )

    return check


async def test_the_fleet_stream_carries_every_drivers_moves_and_status_changes_live(
    door: HttpFixture,
) -> None:
    """No driver is watched or near anything: the stream still has each one's moves, its
    status changes (OFFLINE too), and its going stale (driver.offline); it ends on shutdown."""
    async with door.client(door.token()) as http, door.client(door.token([SCOPE_READ])) as map_:
        got: list[dict[str, Any]] = []
        async with map_.stream("GET", "/v1/fleet:stream") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            reader = asyncio.create_task(_collect(r, got))
            await _until(got, "ready", lambda f: f.get("event") == "ready")
            for i, driver_id in enumerate(("far:north", "far:south")):
                r2 = await http.post(
                    f"/v1/drivers/{driver_id}:uploadLocations",
                    json={"locations": [{"latitude": 70.0 - 100 * i, "longitude": 13.4}]},
                )
                assert r2.status_code == 200
            await _until(got, "far:north's move", _located("far:north", 70.0))
            await _until(got, "far:south's move", _located("far:south", -30.0))
            await _until(got, "far:north online", _event("driver.online", "far:north"))
            r2 = await http.post("/v1/drivers/far:north:setStatus", json={"newStatus": "OFFLINE"})
            assert r2.status_code == 200, r2.text
            await _until(
                got,
                "far:north OFFLINE",
                _event("driver.status_changed", "far:north", newStatus="OFFLINE"),
            )
            # --stale-after 1 s: the sweeper marks far:south offline.
            await _until(got, "far:south stale", _event("driver.offline", "far:south"))
            assert any(f.get("comment") == "heartbeat" for f in got)
            await door.stop(5)
            await asyncio.wait_for(reader, 5)  # ended by the server, not cut
        assert got[-1].get("event") == "end"


async def _first_event(frames: AsyncIterator[dict[str, Any]]) -> str:
    async for frame in frames:
        if "event" in frame:
            return str(frame["event"])
    raise AssertionError("the stream ended without an event")


def _memory_bus(door: HttpFixture) -> MemoryBus:
    bus: Any = door.running.tracking.bus
    while not isinstance(bus, MemoryBus):
        bus = bus.inner  # the metrics and dispatch-index wrappers
    return bus


async def test_a_fleet_stream_leaves_no_subscription_behind(door: HttpFixture) -> None:
    """However a client leaves (after reading, before reading a byte, at shutdown), the
    bus's fleet subscription goes with it: nothing keeps collecting for a gone map."""
    bus = _memory_bus(door)
    async with door.client(door.token()) as http:
        async with http.stream("GET", "/v1/fleet:stream") as r:
            assert await _first_event(sse_frames(r)) == "ready"
            assert len(bus._fleet) == 1
        async with http.stream("GET", "/v1/fleet:stream") as r:
            assert r.status_code == 200  # and gone without reading a byte
        deadline = time.monotonic() + 15
        while bus._fleet:
            assert time.monotonic() < deadline, f"{len(bus._fleet)} fleet subscriptions left"
            await asyncio.sleep(0.02)
        async with http.stream("GET", "/v1/fleet:stream") as r:
            assert await _first_event(sse_frames(r)) == "ready"
            await door.stop(5)
    assert not bus._fleet
