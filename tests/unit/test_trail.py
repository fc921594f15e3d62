"""Trail thinning: the shape survives within the tolerance, measured on the sphere (not in
the plane the code thins in), endpoints stay, and the point cap holds."""

from __future__ import annotations

import itertools
import math

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service.domain import InvalidInput, Location
from driver_service.domain.geo import EARTH_RADIUS_M, haversine_m
from driver_service.domain.trail import TrailThinner, thin_trail
from tests.helpers.synthetic_routes import Route


def _bearing(a: Location, b: Location) -> float:
    phi1, phi2 = math.radians(a.latitude), math.radians(b.latitude)
    dlon = math.radians(b.longitude - a.longitude)
    return math.atan2(
        math.sin(dlon) * math.cos(phi2),
        math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlon),
    )


def distance_to_segment_m(p: Location, a: Location, b: Location) -> float:
    """Distance from p to the great-circle segment a-b (cross-track, clamped to the ends)."""
    d_ap = haversine_m(a.latitude, a.longitude, p.latitude, p.longitude)
    d_ab = haversine_m(a.latitude, a.longitude, b.latitude, b.longitude)
    ends = min(d_ap, haversine_m(b.latitude, b.longitude, p.latitude, p.longitude))
    if d_ab == 0.0:
        return ends
    delta = _bearing(a, p) - _bearing(a, b)
    if math.cos(delta) <= 0:
        return ends
    ang_ap = d_ap / EARTH_RADIUS_M
    xt = math.asin(max(-1.0, min(1.0, math.sin(ang_ap) * math.sin(delta))))
    along = math.acos(max(-1.0, min(1.0, math.cos(ang_ap) / math.cos(xt)))) * EARTH_RADIUS_M
    if along > d_ab:
        return ends
    return abs(xt) * EARTH_RADIUS_M


def max_deviation_m(original: list[Location], thinned: list[Location]) -> float:
    """The farthest any dropped fix lies from the thinned line, per thinned segment."""
    position = {id(f): i for i, f in enumerate(original)}
    worst = 0.0
    for a, b in itertools.pairwise(thinned):
        for p in original[position[id(a)] + 1 : position[id(b)]]:
            worst = max(worst, distance_to_segment_m(p, a, b))
    return worst


def assert_subsequence_with_endpoints(original: list[Location], thinned: list[Location]) -> None:
    assert thinned[0] is original[0]
    assert thinned[-1] is original[-1]
    indices = [next(i for i, f in enumerate(original) if f is t) for t in thinned]
    assert indices == sorted(set(indices))


def city_route() -> list[Location]:
    """Blocks, turns, a stop with jitter, a slow crawl: 1 Hz, ~50 minutes."""
    route = Route(seed=3)
    for bearing in (0, 90, 0, 90, 180, 270, 225, 135):
        route.drive(200, 11.0, bearing)
    route.park(300, jitter_m=8.0).drive(300, 2.0, 45.0).drive(600, 14.0, 300.0)
    return route.fixes


CITY = city_route()


@pytest.mark.parametrize("tolerance_m", [2.0, 10.0, 50.0])
def test_thinning_keeps_the_shape_within_tolerance(tolerance_m: float) -> None:
    thinned = thin_trail(CITY, tolerance_m)

    assert_subsequence_with_endpoints(CITY, thinned)
    assert len(thinned) < len(CITY) / 5
    # The plane the code thins in and the sphere differ by well under 1 %.
    assert max_deviation_m(CITY, thinned) <= tolerance_m * 1.01


def test_a_straight_drive_thins_to_its_two_ends_and_corners_stay() -> None:
    north = Route().drive(3600, 15.0, 0.0).fixes  # 54 km along a meridian
    assert thin_trail(north, 1.0) == [north[0], north[-1]]
    north_east = Route().drive(600, 15.0, 60.0).fixes
    assert thin_trail(north_east, 5.0) == [north_east[0], north_east[-1]]

    square = Route().drive(300, 10.0, 0).drive(300, 10.0, 90).drive(300, 10.0, 180).fixes
    thinned = thin_trail(square, 5.0)
    assert [square.index(f) for f in thinned] == [0, 300, 600, 900]


def test_a_zero_tolerance_and_no_cap_return_every_fix() -> None:
    assert thin_trail(CITY) == CITY
    assert thin_trail(CITY[:2], 10.0) == CITY[:2]
    assert thin_trail([], 10.0) == []


@pytest.mark.parametrize("cap", [2, 3, 10, 100, 500])
def test_the_point_cap_holds_and_keeps_endpoints(cap: int) -> None:
    thinned = thin_trail(CITY, 1.0, max_points=cap)

    assert len(thinned) <= cap
    assert_subsequence_with_endpoints(CITY, thinned)
    if cap >= 10:
        # The cap is used, not undershot by a crude tolerance (when it binds at all).
        assert len(thinned) >= 0.8 * min(cap, len(thin_trail(CITY, 1.0)))


def test_a_cap_without_tolerance_still_thins_by_shape() -> None:
    thinned = thin_trail(CITY, 0.0, max_points=50)

    assert 40 <= len(thinned) <= 50
    assert max_deviation_m(CITY, thinned) < 100


def test_a_parked_car_repeating_one_coordinate_maps_to_the_right_fixes() -> None:
    route = Route().drive(100, 10.0, 0.0).park(200).drive(100, 10.0, 90.0)
    thinned = thin_trail(route.fixes, 1.0)

    assert_subsequence_with_endpoints(route.fixes, thinned)
    assert max_deviation_m(route.fixes, thinned) <= 1.01


def test_a_trail_across_the_antimeridian() -> None:
    fixes = Route(lat=-16.5, lon=179.95).drive(1200, 12.0, 90.0).fixes
    assert fixes[0].longitude > 0 > fixes[-1].longitude

    assert thin_trail(fixes, 1.0) == [fixes[0], fixes[-1]]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    tolerance_m=st.floats(min_value=0.5, max_value=200.0),
    legs=st.lists(
        st.tuples(
            st.integers(min_value=5, max_value=120),
            st.floats(min_value=0.5, max_value=30.0),
            st.floats(min_value=0.0, max_value=359.0),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_random_routes_stay_within_tolerance(
    seed: int, tolerance_m: float, legs: list[tuple[int, float, float]]
) -> None:
    route = Route(seed=seed)
    for seconds, speed, bearing in legs:
        route.drive(seconds, speed, bearing).park(3, jitter_m=5.0)
    thinned = thin_trail(route.fixes, tolerance_m)

    assert_subsequence_with_endpoints(route.fixes, thinned)
    assert max_deviation_m(route.fixes, thinned) <= tolerance_m * 1.01 + 0.01


def test_the_thinned_trail_is_a_valid_line_for_shapely() -> None:
    thinned = thin_trail(CITY, 10.0)
    line = shapely.LineString([(f.longitude, f.latitude) for f in thinned])
    assert line.is_valid
    assert line.length > 0


@pytest.mark.parametrize("chunk", [1, 97, 1000, 10_000])
def test_windowed_thinning_streams_within_tolerance(chunk: int) -> None:
    thinner = TrailThinner(10.0, window=500)
    out: list[Location] = []
    for low in range(0, len(CITY), chunk):
        out.extend(thinner.add(CITY[low : low + chunk]))
    out.extend(thinner.finish())

    assert_subsequence_with_endpoints(CITY, out)
    assert max_deviation_m(CITY, out) <= 10.0 * 1.01
    # Window boundaries are kept and split the shape: a few more points than one pass.
    assert len(out) <= 2 * len(thin_trail(CITY, 10.0))


@pytest.mark.parametrize(
    ("tolerance_m", "max_points"),
    [(-1.0, None), (math.nan, None), (math.inf, None), (1e9, None), (1.0, 1), (1.0, 0)],
)
def test_nonsense_thinning_is_invalid_input(tolerance_m: float, max_points: int | None) -> None:
    with pytest.raises(InvalidInput):
        thin_trail(CITY, tolerance_m, max_points)


def test_the_deviation_check_sees_a_shape_that_was_lost() -> None:
    """The measure the tests rely on is not vacuous: dropping the corners is caught."""
    assert max_deviation_m(CITY, [CITY[0], CITY[-1]]) > 1000
    assert max_deviation_m(CITY, thin_trail(CITY, 50.0)) > 10.0
