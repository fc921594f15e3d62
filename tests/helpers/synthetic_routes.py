"""Recorded-style synthetic routes: a driver's fixes at 1 Hz, built leg by leg (drive, park
with GPS jitter, silence, glitch), reproducible from a seed."""

from __future__ import annotations

import math
import random

from driver_service.domain import Location
from driver_service.domain.geo import EARTH_RADIUS_M

NANOS = 10**9
#: 2024-06-01T00:00:00Z, as tests/unit/strategies.py.
START_NS = 1_717_200_000 * NANOS


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point `distance_m` from (lat, lon) along the great circle at `bearing_deg`."""
    delta = distance_m / EARTH_RADIUS_M
    theta = math.radians(bearing_deg)
    phi1 = math.radians(lat)
    lam1 = math.radians(lon)
    phi2 = math.asin(
        math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    )
    lam2 = lam1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * math.sin(phi2),
    )
    lon2 = (math.degrees(lam2) + 540.0) % 360.0 - 180.0
    return math.degrees(phi2), lon2


class Route:
    """Builds fixes in time order. `report_speed=False` sends speed 0 (a device without
    Doppler speed), so the domain must derive it."""

    def __init__(
        self,
        lat: float = 52.52,
        lon: float = 13.405,
        *,
        start_ns: int = START_NS,
        seed: int = 1,
        report_speed: bool = True,
        driver_id: str = "d1",
    ) -> None:
        self.lat = lat
        self.lon = lon
        self.t_ns = start_ns
        self.rng = random.Random(seed)
        self.report_speed = report_speed
        self.driver_id = driver_id
        self.fixes: list[Location] = []
        self._emit(0.0, 0.0)

    def _emit(
        self, speed: float, heading: float, lat: float | None = None, lon: float | None = None
    ) -> None:
        self.fixes.append(
            Location(
                self.driver_id,
                self.lat if lat is None else lat,
                self.lon if lon is None else lon,
                speed if self.report_speed else 0.0,
                heading,
                self.t_ns,
            )
        )

    def drive(
        self, seconds: int, speed_mps: float, bearing_deg: float, *, every_s: int = 1
    ) -> Route:
        for _ in range(0, seconds, every_s):
            self.t_ns += every_s * NANOS
            self.lat, self.lon = destination(self.lat, self.lon, bearing_deg, speed_mps * every_s)
            self._emit(speed_mps, bearing_deg % 360.0)
        return self

    def park(self, seconds: int, *, jitter_m: float = 0.0, every_s: int = 1) -> Route:
        """Stand still; each fix lands at a random offset (Gaussian, sigma jitter_m / 2 per
        axis, so most within jitter_m) and reports speed 0."""
        for _ in range(0, seconds, every_s):
            self.t_ns += every_s * NANOS
            lat, lon = self.lat, self.lon
            if jitter_m:
                offset = abs(self.rng.gauss(0.0, jitter_m / 2)) * math.sqrt(2)
                lat, lon = destination(lat, lon, self.rng.uniform(0, 360), offset)
            self._emit(0.0, 0.0, lat, lon)
        return self

    def silence(self, seconds: int, *, moved_m: float = 0.0, bearing_deg: float = 0.0) -> Route:
        """No fix for `seconds` (a tunnel, the app off); the driver may move meanwhile. The
        next leg's first fix comes after the silence."""
        self.t_ns += seconds * NANOS - NANOS
        self.lat, self.lon = destination(self.lat, self.lon, bearing_deg, moved_m)
        return self

    def glitch(
        self, offset_m: float, bearing_deg: float = 90.0, *, speed_mps: float = 0.0
    ) -> Route:
        """One fix `offset_m` away from where the driver is (multipath, a cold start); the
        driver does not move."""
        self.t_ns += NANOS
        lat, lon = destination(self.lat, self.lon, bearing_deg, offset_m)
        self._emit(speed_mps, 0.0, lat, lon)
        return self
