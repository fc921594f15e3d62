"""Value objects: a driver's location fix, its availability status and its current state."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    """Availability as the seed spells it on the wire (`GetDriverResponse.status`)."""

    AVAILABLE = "AVAILABLE"
    BUSY = "BUSY"
    OFFLINE = "OFFLINE"


#: Status of a driver first seen through a location: it is sending GPS, so it is on duty.
INITIAL_STATUS = Status.AVAILABLE


@dataclass(frozen=True, slots=True)
class Location:
    """One validated GPS fix. Times are integer nanoseconds since the Unix epoch (UTC),
    which round-trip a protobuf Timestamp exactly."""

    driver_id: str
    latitude: float
    longitude: float
    speed_mps: float
    heading_degrees: float
    recorded_at_ns: int


@dataclass(frozen=True, slots=True)
class Driver:
    """A driver's current state: the newest location and status, never moved back in time."""

    driver_id: str
    status: Status
    location: Location | None
    last_seen_at_ns: int
