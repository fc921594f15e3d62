"""Value objects: a driver's location fix, its availability status and its current state."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from driver_service.domain.fields import fields_of


class Status(enum.StrEnum):
    """Availability as the seed spells it on the wire (`GetDriverResponse.status`)."""

    AVAILABLE = "AVAILABLE"
    BUSY = "BUSY"
    OFFLINE = "OFFLINE"


#: Status of a driver first seen through a location: it is sending GPS, so it is on duty.
INITIAL_STATUS = Status.AVAILABLE


# Location and Driver are frozen dataclasses with their own __init__ (init=False): the one
# dataclass generates for a frozen class sets each field through `object.__setattr__`, ~12.7k
# instructions for a Location against ~8.6k through the slots' own setters (callgrind).
# Equality, hashing, repr, `replace` and immutability are the dataclass's, unchanged. The
# paths that make one per update (one Location per ingested update, one Driver per driver a
# commit advances) use `new_location` and `new_driver` below, cheaper still.


@dataclass(frozen=True, slots=True, init=False)
class Location:
    """One validated GPS fix. Times are integer nanoseconds since the Unix epoch (UTC),
    which round-trip a protobuf Timestamp exactly."""

    driver_id: str
    latitude: float
    longitude: float
    speed_mps: float
    heading_degrees: float
    recorded_at_ns: int

    def __init__(
        self,
        driver_id: str,
        latitude: float,
        longitude: float,
        speed_mps: float,
        heading_degrees: float,
        recorded_at_ns: int,
    ) -> None:
        _set_location_driver_id(self, driver_id)
        _set_latitude(self, latitude)
        _set_longitude(self, longitude)
        _set_speed_mps(self, speed_mps)
        _set_heading_degrees(self, heading_degrees)
        _set_recorded_at_ns(self, recorded_at_ns)


@dataclass(frozen=True, slots=True, init=False)
class Driver:
    """A driver's current state: the newest location and status, never moved back in time."""

    driver_id: str
    status: Status
    location: Location | None
    last_seen_at_ns: int

    def __init__(
        self, driver_id: str, status: Status, location: Location | None, last_seen_at_ns: int
    ) -> None:
        _set_driver_id(self, driver_id)
        _set_status(self, status)
        _set_location(self, location)
        _set_last_seen_at_ns(self, last_seen_at_ns)


def _slot_setters(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The `__set__` of each named slot of `cls` (frozen: only its __init__ uses them)."""
    return tuple(cls.__dict__[name].__set__ for name in names)


(
    _set_location_driver_id,
    _set_latitude,
    _set_longitude,
    _set_speed_mps,
    _set_heading_degrees,
    _set_recorded_at_ns,
) = _slot_setters(
    Location,
    "driver_id",
    "latitude",
    "longitude",
    "speed_mps",
    "heading_degrees",
    "recorded_at_ns",
)
_set_driver_id, _set_status, _set_location, _set_last_seen_at_ns = _slot_setters(
    Driver, "driver_id", "status", "location", "last_seen_at_ns"
)


_LOCATION_FIELDS = fields_of(Location)
_DRIVER_FIELDS = fields_of(Driver)


def new_location(
    driver_id: str,
    latitude: float,
    longitude: float,
    speed_mps: float,
    heading_degrees: float,
    recorded_at_ns: int,
) -> Location:
    """`Location(...)` made as its fields (domain.fields: ~55 % of the constructor's
    instructions), for the paths that make one per update: validation, history reads."""
    made = _LOCATION_FIELDS()
    made.driver_id = driver_id
    made.latitude = latitude
    made.longitude = longitude
    made.speed_mps = speed_mps
    made.heading_degrees = heading_degrees
    made.recorded_at_ns = recorded_at_ns
    made.__class__ = Location
    fix: Location = made
    return fix


def new_driver(
    driver_id: str, status: Status, location: Location | None, last_seen_at_ns: int
) -> Driver:
    """`Driver(...)` made as its fields (see new_location), for a store's commit, which makes
    one for every driver it advances."""
    made = _DRIVER_FIELDS()
    made.driver_id = driver_id
    made.status = status
    made.location = location
    made.last_seen_at_ns = last_seen_at_ns
    made.__class__ = Driver
    driver: Driver = made
    return driver
