"""Random fleets of drivers, crowded at the poles and across the antimeridian where grids and
bounding boxes break, and the brute-force haversine oracle that nearby searches must match
(the in-memory index in tests/unit, the Redis GEO index in tests/integration)."""

from __future__ import annotations

from hypothesis import strategies as st

from driver_service.dispatch.domain.geo import haversine_m
from driver_service.domain import Driver, Location, Status

NOW = 1_800_000_000 * 10**9
S = 10**9

# Centres where bugs live: anywhere, at the poles, on either side of the antimeridian.
latitudes = st.one_of(
    st.floats(-90, 90),
    st.floats(89.0, 90.0),
    st.floats(-90.0, -89.0),
    st.sampled_from([90.0, -90.0, 0.0]),
)
longitudes = st.one_of(
    st.floats(-180, 180),
    st.floats(179.0, 180.0),
    st.floats(-180.0, -179.0),
    st.sampled_from([180.0, -180.0]),
)
statuses = st.sampled_from([Status.AVAILABLE, Status.AVAILABLE, Status.BUSY, Status.OFFLINE])


def wrap(lon: float) -> float:
    return lon if -180.0 <= lon <= 180.0 else (lon + 180.0) % 360.0 - 180.0


@st.composite
def fleets(draw: st.DrawFn) -> tuple[tuple[float, float], list[Driver]]:
    """A query centre and drivers around it (offsets up to ~1.5°, some far away)."""
    centre = (draw(latitudes), draw(longitudes))
    drivers = []
    for n in range(draw(st.integers(0, 60))):
        if draw(st.booleans()):
            lat = min(90.0, max(-90.0, centre[0] + draw(st.floats(-1.5, 1.5))))
            lon = wrap(centre[1] + draw(st.floats(-3.0, 3.0)))
        else:
            lat, lon = draw(latitudes), draw(longitudes)
        age_s = draw(st.sampled_from([0, 5, 60, 119, 121, 600]))
        seen = NOW - age_s * S
        location = Location(f"d{n}", lat, lon, 0.0, 0.0, seen)
        drivers.append(Driver(f"d{n}", draw(statuses), location, seen))
    return centre, drivers


def oracle(
    drivers: list[Driver],
    lat: float,
    lon: float,
    radius_m: float,
    limit: int,
    wanted: set[Status],
    cutoff: int,
) -> list[tuple[str, float]]:
    hits = []
    for d in drivers:
        assert d.location is not None
        if d.status not in wanted or d.last_seen_at_ns < cutoff:
            continue
        distance = haversine_m(lat, lon, d.location.latitude, d.location.longitude)
        if distance <= radius_m:
            hits.append((distance, d.driver_id))
    return [(i, dist) for dist, i in sorted(hits)[:limit]]
