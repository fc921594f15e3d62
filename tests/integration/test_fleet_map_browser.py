"""The fleet map in a real browser (headless Chromium via its driver) against a real server:
locations uploaded over gRPC appear as markers and move within 1 s, clicking a driver shows
its trail, a zone is drawn; every driver is there (OFFLINE ones grey, stale ones faded, and
past the 1,000 a nearby search returns). A screenshot goes to tests/artifacts/ when a check
fails."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from tests.helpers.http_server import HttpFixture, http_server

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
#: Written on success too: copy it to docs/fleet-map.png to refresh the README's picture (a
#: test never rewrites a tracked file).
SCREENSHOT = ARTIFACTS / "fleet-map.png"


def _browser() -> webdriver.Chrome:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium, "make test installs Debian's chromium (scripts/test-deps.sh)"
    assert driver_path, "make test installs Debian's chromium-driver (scripts/test-deps.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--no-proxy-server"):  # fmt: skip
        options.add_argument(arg)
    options.accept_insecure_certs = True  # the development CA is not in the browser's store
    return webdriver.Chrome(options=options, service=Service(driver_path))


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[webdriver.Chrome]:
    driver = _browser()
    try:
        yield driver
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}.png"))
        driver.quit()


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[HttpFixture]:
    async with http_server(tmp_path) as fixture:
        yield fixture


async def _until(check: Callable[[], Any], within_s: float, what: str) -> float:
    """Poll `check` (in a thread: the browser blocks) until truthy; return the time taken."""
    started = time.monotonic()
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return time.monotonic() - started
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what} not seen within {within_s} s")
        await asyncio.sleep(0.05)


def _marker(browser: webdriver.Chrome, driver_id: str) -> Any:
    found = browser.find_elements(By.CSS_SELECTOR, f'[data-driver-id="{driver_id}"].driver-marker')
    return found[0] if found else None


def _look(browser: webdriver.Chrome, driver_id: str) -> tuple[str, str, str] | None:
    """(status, fill colour as drawn, stale) of a driver's marker, None without one."""
    marker = _marker(browser, driver_id)
    if marker is None:
        return None
    return (
        marker.get_attribute("data-status") or "",
        marker.get_attribute("fill") or "",
        marker.get_attribute("data-stale") or "",
    )


def _marker_count(browser: webdriver.Chrome) -> int:
    count: int = browser.execute_script(
        "return document.querySelectorAll('.driver-marker[data-driver-id]').length"
    )
    return count


GREY = "#888888"  # OFFLINE (app.js COLORS)
GREEN = "#1a9850"  # AVAILABLE
ORANGE = "#f46d43"  # BUSY


async def test_markers_appear_and_move_trail_and_zones(
    door: HttpFixture, browser: webdriver.Chrome
) -> None:
    token = door.token()
    async with door.client(token) as http:
        zone = {"id": "z-centre", "name": "Centre",
                "circle": {"latitude": 52.52, "longitude": 13.405, "radiusM": 400}}  # fmt: skip
        assert (await http.post("/v1/zones", json=zone)).status_code == 200
        # Before the page opens (so from the listing): one OFFLINE, one silent for 10 min.
        old = _rfc3339(time.time() - 600)
        before = [
            {"driverId": "drv-off", "latitude": 52.517, "longitude": 13.395},
            {"driverId": "drv-old", "latitude": 52.523, "longitude": 13.396, "timestamp": old},
            {"driverId": "drv-busy", "latitude": 52.5245, "longitude": 13.4145},
        ]
        r = await http.post("/v1/locations:batchUpload", json={"locations": before})
        assert r.json()["persistedCount"] == 3, r.text
        for driver_id, status in (("drv-off", "OFFLINE"), ("drv-busy", "BUSY")):
            r = await http.post(f"/v1/drivers/{driver_id}:setStatus", json={"newStatus": status})
            assert r.status_code == 200, r.text
    await asyncio.to_thread(browser.get, f"{door.base_url}/#52.52,13.405,14")
    # No token yet: the map asks for one (never in the URL) and keeps it for the tab.
    await _until(lambda: browser.find_element(By.ID, "token-dialog").get_attribute("open")
                 is not None, 5, "the token dialog")  # fmt: skip

    def enter_token() -> None:
        browser.find_element(By.ID, "token-input").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()

    await asyncio.to_thread(enter_token)
    assert token not in browser.current_url
    await _until(lambda: browser.find_elements(By.CSS_SELECTOR, ".zone-shape"), 5, "the zone")
    await _until(lambda: _look(browser, "drv-off") == ("OFFLINE", GREY, "0"), 5, "drv-off grey")
    await _until(lambda: _look(browser, "drv-old") == ("AVAILABLE", GREEN, "1"), 5, "drv-old stale")
    await _until(lambda: _look(browser, "drv-busy") == ("BUSY", ORANGE, "0"), 5, "drv-busy")

    async with door.channel() as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        start = time.time() - 90  # a trail of the last few minutes

        async def send(driver_id: str, lat: float, lon: float, at: float) -> None:
            update = pb.LocationUpdate(driver_id=driver_id, latitude=lat, longitude=lon)
            update.timestamp.FromNanoseconds(int(at * 1e9))

            async def one() -> AsyncIterator[pb.LocationUpdate]:
                yield update

            await stub.UploadLocations(one(), metadata=door.metadata(token))

        await asyncio.sleep(0.5)  # the fleet stream is open
        for i in range(5):  # a trail: five fixes of the last few minutes
            await send("drv-m1", 52.515 + i * 0.001, 13.40, start + i * 15)
        await send("drv-m2", 52.522, 13.41, time.time())
        took = await _until(lambda: _marker(browser, "drv-m1") and _marker(browser, "drv-m2"),
                            1.0, "both markers")  # fmt: skip
        assert took <= 1.0
        await send("drv-m1", 52.5251, 13.4012, time.time())
        took = await _until(
            lambda: (m := _marker(browser, "drv-m1")) and m.get_attribute("data-lat") == "52.5251",
            1.0,
            "drv-m1 moved",
        )
        assert took <= 1.0

    await asyncio.to_thread(lambda: _marker(browser, "drv-m1").click())
    await _until(
        lambda: browser.find_elements(By.CSS_SELECTOR, '#driver-fields[data-driver-id="drv-m1"]'),
        3,
        "the driver's details",
    )

    def trail_points() -> int:
        lines = browser.find_elements(By.CSS_SELECTOR, '.trail-line[data-driver-id="drv-m1"]')
        return int(lines[0].get_attribute("data-points") or 0) if lines else 0

    await _until(lambda: trail_points() >= 6, 3, "the trail of the last hour")
    async with door.client(token) as http:  # live, over the fleet stream: OFFLINE turns grey
        r = await http.post("/v1/drivers/drv-m2:setStatus", json={"newStatus": "OFFLINE"})
        assert r.status_code == 200, r.text
    await _until(lambda: _look(browser, "drv-m2") == ("OFFLINE", GREY, "0"), 3, "drv-m2 grey")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await asyncio.to_thread(browser.save_screenshot, str(SCREENSHOT))

    # The whole fleet, not a nearby search: 1,050 more drivers in view (a search returned at
    # most 1,000) and one far outside it; each gets its marker.
    crowd = [
        {"driverId": f"drv-c{i:04d}", "latitude": 52.50 + (i // 35) * 0.0012,
         "longitude": 13.37 + (i % 35) * 0.002}
        for i in range(1050)
    ] + [{"driverId": "drv-far", "latitude": -33.9, "longitude": 18.4}]  # fmt: skip
    async with door.client(token) as http:
        r = await http.post("/v1/locations:batchUpload", json={"locations": crowd})
        assert r.json()["persistedCount"] == len(crowd), r.text
    total = len(crowd) + 5  # drv-off, drv-old, drv-busy, drv-m1, drv-m2
    await _until(lambda: _marker_count(browser) == total, 15, f"{total} markers")
    assert _look(browser, "drv-far") == ("AVAILABLE", GREEN, "0")
    assert _look(browser, "drv-c1049") == ("AVAILABLE", GREEN, "0")

    # A reload lists them all again, in pages of 1,000 (GET /v1/drivers).
    await asyncio.to_thread(browser.refresh)
    await _until(lambda: _marker_count(browser) == total, 20, f"{total} markers after a reload")
    assert _look(browser, "drv-m2") == ("OFFLINE", GREY, "0")


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
