"""Plausible simulated drives for `upload --route` and `simulate`: pure functions, no I/O.

A drive starts near a centre, moves at 5 to 15 m/s and turns gradually; the speed and heading
it reports are computed from its successive positions and timestamps, so a consumer that
checks them against the track (distance / time, bearing) finds them consistent.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from driver_service.dispatch.domain.geo import EARTH_RADIUS_M, haversine_m

BERLIN = (52.52, 13.405)
MIN_SPEED_MPS = 5.0
MAX_SPEED_MPS = 15.0
#: City driving turns, but not instantly: at most this much heading change per second.
MAX_TURN_DEG_PER_S = 15.0
#: Speed changes per second at most (about 0.2 g), so no teleporting between fixes.
MAX_ACCEL_MPS2 = 2.0
START_RADIUS_M = 3_000.0
#: Beyond this distance from the centre a drive steers back, so fleets stay in one city.
MAX_RADIUS_M = 10_000.0
NANOS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RoutePoint:
    """One fix of a drive: where it is, how fast and which way it moved to get there."""

    latitude: float
    longitude: float
    speed_mps: float
    heading_degrees: float
    recorded_at_ns: int


@dataclass(frozen=True, slots=True)
class Drive:
    """Where a drive is and what it intends next; `point` is what it last reported."""

    point: RoutePoint
    intended_heading: float
    intended_speed: float
    centre: tuple[float, float]


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from the first point to the second, in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return normalize_heading(math.degrees(math.atan2(y, x)))


def destination(lat: float, lon: float, heading: float, distance_m: float) -> tuple[float, float]:
    """The point `distance_m` away along `heading` (degrees clockwise from north)."""
    d = distance_m / EARTH_RADIUS_M
    p1, l1, h = math.radians(lat), math.radians(lon), math.radians(heading)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(h))
    l2 = l1 + math.atan2(
        math.sin(h) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def normalize_heading(degrees: float) -> float:
    """Map any angle to [0, 360); the wire accepts 0..360."""
    h = degrees % 360.0
    return 0.0 if h >= 360.0 else h


def heading_difference(a: float, b: float) -> float:
    """Signed smallest turn from heading `a` to heading `b`, in (-180, 180]."""
    d = (b - a) % 360.0
    return d - 360.0 if d > 180.0 else d


def start_drive(
    rng: random.Random,
    at_ns: int,
    centre: tuple[float, float] = BERLIN,
    radius_m: float = START_RADIUS_M,
) -> Drive:
    """A drive at a random point within `radius_m` of `centre`, about to move off."""
    lat, lon = destination(
        centre[0], centre[1], rng.uniform(0.0, 360.0), radius_m * math.sqrt(rng.random())
    )
    heading = rng.uniform(0.0, 360.0)
    speed = rng.uniform(MIN_SPEED_MPS, MAX_SPEED_MPS)
    return Drive(RoutePoint(lat, lon, speed, heading, at_ns), heading, speed, centre)


def advance(drive: Drive, at_ns: int, rng: random.Random) -> Drive:
    """Move the drive on to time `at_ns`: turn and change speed a little, then report the
    speed and heading actually travelled since the previous point."""
    prev = drive.point
    dt = (at_ns - prev.recorded_at_ns) / NANOS
    if dt <= 0:
        return drive
    turn_limit = MAX_TURN_DEG_PER_S * dt
    turn = rng.uniform(-turn_limit, turn_limit) / 2
    lat0, lon0 = drive.centre
    if haversine_m(lat0, lon0, prev.latitude, prev.longitude) > MAX_RADIUS_M:
        home = bearing_deg(prev.latitude, prev.longitude, lat0, lon0)
        back = heading_difference(drive.intended_heading, home)
        turn = max(-turn_limit, min(turn_limit, back))
    heading = normalize_heading(drive.intended_heading + turn)
    accel = rng.uniform(-MAX_ACCEL_MPS2, MAX_ACCEL_MPS2) * dt
    speed = max(MIN_SPEED_MPS, min(MAX_SPEED_MPS, drive.intended_speed + accel))
    lat, lon = destination(prev.latitude, prev.longitude, heading, speed * dt)
    travelled = haversine_m(prev.latitude, prev.longitude, lat, lon)
    point = RoutePoint(
        lat,
        lon,
        travelled / dt,
        bearing_deg(prev.latitude, prev.longitude, lat, lon) if travelled > 0 else heading,
        at_ns,
    )
    return Drive(point, heading, speed, drive.centre)


def simulated_route(
    points: int,
    interval_s: float,
    end_ns: int,
    rng: random.Random,
    centre: tuple[float, float] = BERLIN,
) -> list[RoutePoint]:
    """`points` fixes `interval_s` apart, the last at `end_ns` (uploads are of the past)."""
    if points <= 0:
        return []
    step_ns = round(interval_s * NANOS)
    drive = start_drive(rng, end_ns - (points - 1) * step_ns, centre)
    route: list[RoutePoint] = []
    for i in range(points):
        if i:
            drive = advance(drive, drive.point.recorded_at_ns + step_ns, rng)
        route.append(drive.point)
    if len(route) > 1:
        # The first fix has no predecessor: report what the drive did right after it.
        first, second = route[0], route[1]
        route[0] = RoutePoint(
            first.latitude,
            first.longitude,
            second.speed_mps,
            second.heading_degrees,
            first.recorded_at_ns,
        )
    return route
