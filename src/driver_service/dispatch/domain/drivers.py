"""What dispatch knows of a driver, and of a driver found near a point."""

from __future__ import annotations

from dataclasses import dataclass

from driver_service.domain import Status

#: Drivers forgotten this long after they went stale (they are counted as stale until then).
DEFAULT_FORGET_AFTER_NS = 24 * 3600 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class IndexedDriver:
    """What dispatch knows of one driver."""

    driver_id: str
    status: Status
    latitude: float
    longitude: float
    last_seen_at_ns: int


@dataclass(frozen=True, slots=True)
class NearbyDriver:
    driver: IndexedDriver
    distance_m: float
