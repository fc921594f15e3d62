"""ZoneEvaluator's skip of the lookup for a fix within its driver's clear disc: it must never
change an event or a state, on routes that drive, graze edges, stop exactly on them, jitter
across them, and see zones change mid-route."""

from __future__ import annotations

import json
import math

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service.app.evaluation import ZoneEvaluator
from driver_service.domain import Location
from driver_service.domain.events import Event, TrackerState
from driver_service.domain.zones import CLEAR_SEARCH_DEG, Circle, PolygonShape, Zone, ZoneIndex

S = 10**9
T0 = 1_800_000_000 * S
M_PER_DEG = 6_371_008.8 * math.pi / 180.0
LAT0, LON0 = 52.52, 13.40
KX = M_PER_DEG * math.cos(math.radians(LAT0))


def lonlat(east_m: float, north_m: float) -> tuple[float, float]:
    return LON0 + east_m / KX, LAT0 + north_m / M_PER_DEG


def square(zone_id: str, west: float, south: float, side: float, version: int = 1) -> Zone:
    corners = [(west, south), (west + side, south), (west + side, south + side)]
    corners += [(west, south + side), (west, south)]
    coords = [[list(lonlat(e, n)) for e, n in corners]]
    shape = PolygonShape(json.dumps({"type": "Polygon", "coordinates": coords}))
    return Zone(zone_id, zone_id, (), shape, dwell_ns=40 * S, version=version)


def circle(zone_id: str, east: float, north: float, radius: float, version: int = 1) -> Zone:
    lon, lat = lonlat(east, north)
    return Zone(zone_id, zone_id, (), Circle(lat, lon, radius), version=version)


def diamond(zone_id: str, east: float, north: float, reach: float) -> Zone:
    """A square turned 45 degrees (and a little more): edges no axis rounds exactly."""
    corners = [(reach, 7.0), (-7.0, reach), (-reach, -7.0), (7.0, -reach), (reach, 7.0)]
    coords = [[list(lonlat(east + e, north + n)) for e, n in corners]]
    shape = PolygonShape(json.dumps({"type": "Polygon", "coordinates": coords}))
    return Zone(zone_id, zone_id, (), shape)


#: Zone sets the routes switch between mid-route: a zone appears under the driver, one grows,
#: one moves away, all vanish.
LAYOUTS: list[list[Zone]] = [
    [square("a", 0, 0, 300), circle("c", 450, 150, 60), diamond("d", 150, 150, 100)],
    [square("a", 0, 0, 320, version=2), square("b", 250, 0, 200), circle("c", 450, 150, 60)],
    [circle("c", 100, 100, 150, version=2), diamond("d", 150, 150, 140)],
    [],
]


def rings(zones: list[Zone]) -> shapely.Geometry:
    """Every edge a fix may be placed on: each polygon's own, its inner and outer band's;
    each circle's three radii (as fine polygons)."""
    parts: list[shapely.Geometry] = []
    for zone in zones:
        shape = zone.shape
        if isinstance(shape, PolygonShape):
            for polygon in (shape.geometry, shape._inner, shape._outer):
                parts.extend(shapely.get_parts(shapely.boundary(polygon)))
        else:
            for radius in (shape.radius_m - 20.0, shape.radius_m, shape.radius_m + 20.0):
                centre_e = (shape.longitude - LON0) * KX
                centre_n = (shape.latitude - LAT0) * M_PER_DEG
                ring = [
                    lonlat(centre_e + radius * math.cos(a), centre_n + radius * math.sin(a))
                    for a in (2 * math.pi * k / 720 for k in range(721))
                ]
                parts.append(shapely.LineString(ring))
    return shapely.MultiLineString(parts) if parts else shapely.MultiLineString()


#: (kind, dx, dy, gap_s, zone change): kind 0 drives by (dx, dy) metres, 1 goes onto the
#: nearest edge, 2 onto it and up to 3 units in the last place either side, 3 jitters by a
#: metre.
STEP = st.tuples(
    st.integers(0, 3),
    st.integers(-40, 40),
    st.integers(-40, 40),
    st.integers(1, 40),
    st.integers(0, 15),
)


def advance(
    place: tuple[float, float], step: tuple[int, int, int, int, int], edges: shapely.Geometry
) -> tuple[float, float]:
    kind, dx, dy, _, _ = step
    lon, lat = place
    if kind == 0:
        return lon + dx / KX, lat + dy / M_PER_DEG
    if kind == 3:
        return lon + (1 if dx > 0 else -1) / KX, lat + (1 if dy > 0 else -1) / M_PER_DEG
    if edges.is_empty:
        return place
    nearest = shapely.get_coordinates(shapely.shortest_line(shapely.Point(lon, lat), edges))[1]
    x, y = float(nearest[0]), float(nearest[1])
    if kind == 2:  # a few units in the last place towards where the driver was, or away
        for _ in range(abs(dx) % 4):
            x = math.nextafter(x, lon if dx > 0 else -lon)
            y = math.nextafter(y, lat if dx > 0 else -lat)
    return x, y


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(STEP, st.booleans()), min_size=1, max_size=80),
    st.integers(0, len(LAYOUTS) - 1),
)
def test_the_skip_never_changes_what_a_route_gives(
    steps: list[tuple[tuple[int, int, int, int, int], bool]], first_layout: int
) -> None:
    skipping, plain = ZoneEvaluator(skip_near=True), ZoneEvaluator()
    layout = first_layout
    version = 1

    def load() -> None:
        zones = LAYOUTS[layout]
        live = {zone.zone_id: zone.version for zone in zones}
        for evaluator in (skipping, plain):
            evaluator.load_zones(version, live, zones)

    load()
    places = {"d1": lonlat(150, 150), "d2": lonlat(440, 100)}
    states_skip: dict[str, TrackerState] = {}
    states_plain: dict[str, TrackerState] = {}
    t_s = 0
    batch: list[Location] = []
    for step, flush in steps:
        driver = "d1" if step[1] % 3 else "d2"
        if step[4] == 0:  # a zone change counts from the next update
            layout = (layout + 1) % len(LAYOUTS)
            version += 1
            load()
        places[driver] = advance(places[driver], step, rings(LAYOUTS[layout]))
        t_s += step[3]
        lon, lat = places[driver]
        batch.append(Location(driver, lat, lon, 5.0, 90.0, T0 + t_s * S))
        if not flush and len(batch) < 4:
            continue
        new_skip, events_skip = skipping.on_locations(states_skip, batch)
        new_plain, events_plain = plain.on_locations(states_plain, batch)
        assert new_skip == new_plain
        assert events_skip == events_plain
        states_skip.update(new_skip)
        states_plain.update(new_plain)
        batch = []


def test_a_driver_creeping_along_skips_most_lookups_and_misses_no_edge() -> None:
    # 1 m steps east across a square and out again: the same events as without the skip,
    # and a fix's clear radius measured only now and then.
    zones = [square("a", 0, 0, 300)]
    live = {"a": 1}
    skipping, plain = ZoneEvaluator(skip_near=True), ZoneEvaluator()
    for evaluator in (skipping, plain):
        evaluator.load_zones(1, live, zones)
    states_skip: dict[str, TrackerState] = {}
    states_plain: dict[str, TrackerState] = {}
    all_skip: list[Event] = []
    all_plain: list[Event] = []
    radii: list[float] = []
    for i in range(-100, 400):
        lon, lat = lonlat(i, 150)
        loc = [Location("d1", lat, lon, 5.0, 90.0, T0 + (i + 101) * S)]
        new_skip, events_skip = skipping.on_locations(states_skip, loc)
        new_plain, events_plain = plain.on_locations(states_plain, loc)
        states_skip.update(new_skip)
        states_plain.update(new_plain)
        all_skip += events_skip
        all_plain += events_plain
        assert new_skip == new_plain
        radii.append(skipping._discs["d1"][4])
    assert all_skip == all_plain
    assert [(e.type.value, e.zone_id) for e in all_skip] == [
        ("driver.online", ""),
        ("zone.enter", "a"),
        ("zone.dwell", "a"),
        ("zone.exit", "a"),
    ]
    # A radius was measured at most a few times per distinct one (it is re-measured only
    # where a fix leaves its disc): far fewer than the 500 fixes.
    assert 0 < len(set(radii)) < 60


def test_clear_radii_are_the_distance_to_the_nearest_band_edge() -> None:
    index = ZoneIndex([square("a", 0, 0, 300), circle("c", 1000, 150, 100)])
    # 150 m inside the square: its inner band is 130 m away, nearest north-south in degrees.
    lon, lat = lonlat(150, 150)
    (radius,) = index.clear_radii([lat], [lon])
    assert radius * M_PER_DEG == pytest.approx(130.0, rel=1e-3)
    # 50 m from the circle's centre: its inner band (80 m) is 30 m away, counted north-south.
    lon, lat = lonlat(1000, 200)
    (radius,) = index.clear_radii([lat], [lon])
    assert radius * M_PER_DEG == pytest.approx(30.0, rel=1e-3)
    # Far from everything: the search distance.
    lon, lat = lonlat(5000, 5000)
    assert index.clear_radii([lat], [lon]) == [CLEAR_SEARCH_DEG]


def test_a_fix_on_the_edge_nearest_its_anchor_is_looked_up() -> None:
    # The margin at work: points on the nearest edge, or a few units in the last place either
    # side of it, are at the clear radius up to rounding, and each of them is looked up (its
    # driver's disc is replaced), never taken from the disc.
    zones = [diamond("d", 0, 0, 100), circle("c", 300, 0, 80), square("a", -400, -50, 200)]
    evaluator = ZoneEvaluator(skip_near=True)
    evaluator.load_zones(1, {z.zone_id: 1 for z in zones}, zones)
    edges = rings(zones)
    t = T0
    looked_up = 0
    for k in range(60):
        east, north = -500 + 17.0 * k, 11.0 * math.sin(k)
        states: dict[str, TrackerState] = {}
        for e in (east, east + 0.5):  # two fixes close together: the second gets a radius
            t += S
            lon, lat = lonlat(e, north)
            new, _ = evaluator.on_locations(states, [Location(f"k{k}", lat, lon, 0, 0, t)])
            states.update(new)
        anchor = evaluator._discs[f"k{k}"]
        if anchor[2] <= 0:
            continue
        x, y = (
            float(v)
            for v in shapely.get_coordinates(
                shapely.shortest_line(shapely.Point(anchor[0], anchor[1]), edges)
            )[1]
        )
        for ulps in range(-3, 4):
            px, py = x, y
            for _ in range(abs(ulps)):
                px = math.nextafter(px, anchor[0] if ulps > 0 else -anchor[0])
                py = math.nextafter(py, anchor[1] if ulps > 0 else -anchor[1])
            if (px - anchor[0]) ** 2 + (py - anchor[1]) ** 2 < (anchor[4] - 1e-9) ** 2:
                continue  # truly inside the disc, by more than rounding: may be skipped
            t += S
            evaluator.on_locations(states, [Location(f"k{k}", py, px, 0, 0, t)])
            assert evaluator._discs[f"k{k}"] is not anchor
            looked_up += 1
            evaluator._discs[f"k{k}"] = anchor
    assert looked_up > 100
