"""Great-circle geometry shared by every spatial index and the tests' brute-force oracle."""

from __future__ import annotations

import math

# One sphere and one great-circle formula for the whole service: history sums and dispatch
# searches count the same metre.
from driver_service.domain.geo import EARTH_RADIUS_M, haversine_m

#: Largest search radius: beyond it "nearby" is not a dispatch question.
MAX_RADIUS_M = 100_000.0
#: Slack added to cell and band bounds so float rounding never drops a driver on the edge.
_EPS_DEG = 1e-9

__all__ = [
    "EARTH_RADIUS_M",
    "MAX_RADIUS_M",
    "haversine_m",
    "latitude_band",
    "longitude_half_width",
]


def latitude_band(latitude: float, radius_m: float) -> tuple[float, float, bool]:
    """(south, north, touches_pole): the latitudes a cap of `radius_m` around `latitude`
    covers, and whether it contains a pole (then it spans every longitude)."""
    d_deg = math.degrees(radius_m / EARTH_RADIUS_M) + _EPS_DEG
    south, north = latitude - d_deg, latitude + d_deg
    return max(south, -90.0), min(north, 90.0), south <= -90.0 or north >= 90.0


def longitude_half_width(latitude: float, radius_m: float) -> float | None:
    """Half the longitude extent (degrees) of the cap, or None if it spans every longitude.

    For a cap of angular radius d around latitude φ that contains no pole, the extreme
    longitudes are at ±asin(sin d / cos φ) — wider than d/cos φ suggests near the poles.
    """
    d = radius_m / EARTH_RADIUS_M
    if math.degrees(d) + abs(latitude) >= 90.0:
        return None
    x = math.sin(d) / math.cos(math.radians(latitude))
    if x >= 1.0:
        return None
    half = math.degrees(math.asin(x)) + _EPS_DEG
    return None if half >= 180.0 else half
