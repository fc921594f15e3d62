"""Simulated routes must look like real driving: consumers check speed and heading against
the track, and a fleet must stay in its city."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver_service.cli import routes

NANOS = 1_000_000_000
END_NS = 1_790_000_000 * NANOS


@given(
    lat=st.floats(-80, 80),
    lon=st.floats(-180, 180),
    heading=st.floats(0, 359.999),
    distance=st.floats(1.0, 50_000.0),
)
def test_destination_is_inverse_of_distance_and_bearing(
    lat: float, lon: float, heading: float, distance: float
) -> None:
    lat2, lon2 = routes.destination(lat, lon, heading, distance)
    assert -90 <= lat2 <= 90
    assert -180 <= lon2 <= 180
    assert routes.haversine_m(lat, lon, lat2, lon2) == pytest.approx(distance, rel=1e-6)
    turn = routes.heading_difference(heading, routes.bearing_deg(lat, lon, lat2, lon2))
    assert abs(turn) < 1e-3


def test_known_distance_berlin_to_potsdam() -> None:
    # Berlin Alexanderplatz to Potsdam Hbf: about 28.5 km as the crow flies, to the south-west.
    d = routes.haversine_m(52.5219, 13.4132, 52.3917, 13.0670)
    assert 27_000 < d < 29_500
    assert 225 < routes.bearing_deg(52.5219, 13.4132, 52.3917, 13.0670) < 250


@pytest.mark.parametrize("seed", range(20))
def test_route_speed_and_heading_match_the_track(seed: int) -> None:
    interval = 1.0
    points = routes.simulated_route(120, interval, END_NS, random.Random(seed))
    assert len(points) == 120
    assert points[-1].recorded_at_ns == END_NS
    for prev, cur in itertools.pairwise(points):
        assert cur.recorded_at_ns - prev.recorded_at_ns == interval * NANOS
        travelled = routes.haversine_m(prev.latitude, prev.longitude, cur.latitude, cur.longitude)
        assert cur.speed_mps == pytest.approx(travelled / interval, rel=1e-6)
        assert routes.MIN_SPEED_MPS - 1e-6 <= cur.speed_mps <= routes.MAX_SPEED_MPS + 1e-6
        bearing = routes.bearing_deg(prev.latitude, prev.longitude, cur.latitude, cur.longitude)
        assert abs(routes.heading_difference(cur.heading_degrees, bearing)) < 1e-3
        assert 0.0 <= cur.heading_degrees < 360.0
    # The first fix reports what the drive did next, so it is consistent too.
    assert points[0].speed_mps == points[1].speed_mps


@pytest.mark.parametrize("seed", range(20))
def test_route_turns_and_accelerates_gradually(seed: int) -> None:
    interval = 2.0
    points = routes.simulated_route(200, interval, END_NS, random.Random(seed))
    for a, b in itertools.pairwise(points[1:]):
        turn = abs(routes.heading_difference(a.heading_degrees, b.heading_degrees))
        assert turn <= routes.MAX_TURN_DEG_PER_S * interval + 1e-3
        assert abs(b.speed_mps - a.speed_mps) <= routes.MAX_ACCEL_MPS2 * interval + 1e-3


@pytest.mark.parametrize("seed", range(10))
def test_drives_start_near_the_centre_and_stay_in_the_city(seed: int) -> None:
    centre = (48.137, 11.575)  # Munich: the centre is configurable
    rng = random.Random(seed)
    drive = routes.start_drive(rng, END_NS, centre)
    start = drive.point
    assert routes.haversine_m(*centre, start.latitude, start.longitude) <= (
        routes.START_RADIUS_M + 1
    )
    farthest = 0.0
    for step in range(1, 3600):  # an hour of driving, one fix every second
        drive = routes.advance(drive, END_NS + step * NANOS, rng)
        farthest = max(
            farthest, routes.haversine_m(*centre, drive.point.latitude, drive.point.longitude)
        )
    # Steering home starts at MAX_RADIUS_M; a U-turn at <=15 deg/s and <=15 m/s adds < 1 km.
    assert farthest < routes.MAX_RADIUS_M + 1_000


def test_drive_beyond_the_radius_turns_back() -> None:
    centre = routes.BERLIN
    lat, lon = routes.destination(*centre, 90.0, routes.MAX_RADIUS_M + 500)
    drive = routes.Drive(routes.RoutePoint(lat, lon, 10.0, 90.0, END_NS), 90.0, 10.0, centre)
    rng = random.Random(1)
    for step in range(1, 61):
        drive = routes.advance(drive, END_NS + step * NANOS, rng)
    # After a minute it heads west, back towards the centre.
    assert abs(routes.heading_difference(drive.point.heading_degrees, 270.0)) < 30


def test_same_seed_same_route_different_seed_different_route() -> None:
    a = routes.simulated_route(10, 1.0, END_NS, random.Random(7))
    b = routes.simulated_route(10, 1.0, END_NS, random.Random(7))
    c = routes.simulated_route(10, 1.0, END_NS, random.Random(8))
    assert a == b
    assert a != c


def test_advance_to_the_same_instant_does_not_move() -> None:
    drive = routes.start_drive(random.Random(3), END_NS)
    assert routes.advance(drive, END_NS, random.Random(3)) == drive


def test_empty_and_single_point_routes() -> None:
    assert routes.simulated_route(0, 1.0, END_NS, random.Random(1)) == []
    (only,) = routes.simulated_route(1, 1.0, END_NS, random.Random(1))
    assert only.recorded_at_ns == END_NS
    assert math.isfinite(only.speed_mps)
