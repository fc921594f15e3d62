"""The in-memory spatial index against a brute-force haversine oracle on random fleets,
crowded at the poles and across the antimeridian, where grids and bounding boxes break."""

from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service.dispatch.memory_index import Grid, MemoryDriverIndex
from driver_service.domain import Driver, Location, Status
from tests.helpers.fleets import NOW, S, fleets, latitudes, longitudes, oracle, wrap


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(
    fleet=fleets(),
    radius_m=st.floats(1.0, 100_000.0),
    limit=st.integers(1, 25),
    wanted=st.sampled_from([{Status.AVAILABLE}, {Status.BUSY}, {Status.AVAILABLE, Status.BUSY}]),
    max_age_s=st.sampled_from([1, 30, 120]),
    cell_deg=st.sampled_from([0.005, 0.05, 1.0]),
)
def test_nearby_matches_brute_force(
    fleet: tuple[tuple[float, float], list[Driver]],
    radius_m: float,
    limit: int,
    wanted: set[Status],
    max_age_s: int,
    cell_deg: float,
) -> None:
    (lat, lon), drivers = fleet
    cutoff = NOW - max_age_s * S

    async def search() -> list[tuple[str, float]]:
        index = MemoryDriverIndex(cell_deg=cell_deg)
        await index.put(drivers)
        found = await index.nearby(lat, lon, radius_m, limit, wanted, cutoff)
        return [(n.driver.driver_id, n.distance_m) for n in found]

    got = run(search())
    assert got == oracle(drivers, lat, lon, radius_m, limit, wanted, cutoff)
    assert len(got) <= limit
    assert all(distance <= radius_m for _, distance in got)


@settings(max_examples=200, deadline=None)
@given(lat=latitudes, lon=longitudes, radius_m=st.floats(1.0, 100_000.0))
def test_cover_contains_the_cell_of_every_point_on_the_circle(
    lat: float, lon: float, radius_m: float
) -> None:
    """Points exactly on the search circle (all bearings) lie in covered cells."""
    grid = Grid(0.005)
    cover = set(grid.cover(lat, lon, radius_m))
    d = radius_m / 6_371_008.8 * 0.999999
    p1, l1 = math.radians(lat), math.radians(lon)
    for k in range(72):
        b = math.radians(k * 5)
        p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
        l2 = l1 + math.atan2(
            math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
        )
        plat, plon = math.degrees(p2), wrap(math.degrees(l2))
        assert grid.cell(plat, plon) in cover, (plat, plon)


def test_moves_follow_locations_and_never_go_back_in_time() -> None:
    async def scenario() -> None:
        index = MemoryDriverIndex()
        assert await index.move([Location("a", 0.0, 0.0, 0, 0, NOW)]) == ["a"]
        await index.put([Driver("a", Status.AVAILABLE, Location("a", 0, 0, 0, 0, NOW), NOW)])
        await index.move([Location("a", 10.0, 10.0, 0, 0, NOW + S)])
        await index.move([Location("a", 0.0, 0.0, 0, 0, NOW)])  # older: ignored
        near_new = await index.nearby(10.0, 10.0, 100, 5, {Status.AVAILABLE}, 0)
        assert [n.driver.driver_id for n in near_new] == ["a"]
        assert await index.nearby(0.0, 0.0, 1000, 5, {Status.AVAILABLE}, 0) == []

    run(scenario())


def test_offline_drivers_are_forgotten_and_stale_ones_swept_and_counted() -> None:
    async def scenario() -> None:
        index = MemoryDriverIndex()
        fresh = Driver("fresh", Status.AVAILABLE, Location("fresh", 1, 1, 0, 0, NOW), NOW)
        old = Driver(
            "old", Status.AVAILABLE, Location("old", 1, 1, 0, 0, NOW - 300 * S), NOW - 300 * S
        )
        gone = Driver("gone", Status.OFFLINE, Location("gone", 1, 1, 0, 0, NOW), NOW)
        await index.put([fresh, old, gone])
        assert await index.get("gone") is None
        assert await index.sweep(NOW - 120 * S) == 1
        assert len(index) == 1
        found = await index.nearby(1, 1, 10, 10, {Status.AVAILABLE}, 0)
        assert [n.driver.driver_id for n in found] == ["fresh"]
        # The stale driver comes back with a new location: searchable again, no longer stale.
        await index.move([Location("old", 1, 1, 0, 0, NOW + S)])
        assert await index.sweep(NOW - 120 * S) == 0
        assert len(index) == 2

    run(scenario())
