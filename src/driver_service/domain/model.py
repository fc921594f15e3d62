"""Value objects: a driver's location fix, its availability status and its current state."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from driver_service.domain.fields import fields_of


class Status(enum.StrEnum):
    """Availability as the seed spells it on the wire (`GetDriverResponse.status`)."""

    AVAILABLE = "AVAILABLE"
    BUSY = "BUSY"
    OFFLINE = "OFFLINE"


#: Status of a driver first seen through a location: it is sending GPS, so it is on duty.
INITIAL_STATUS = Status.AVAILABLE


# Location and Driver are plain frozen dataclasses. The generated __init__ sets each field
# through `object.__setattr__` (~12.7k instructions a Location, callgrind); every path that
# makes them from data (validation, stores, the bus, the wire) uses `new_location` and
# `new_driver` below instead, which build the same objects for ~4k. Equality, hashing, repr,
# `replace` and immutability are the dataclass's.


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
    """`Location(...)` made as its fields (domain.fields), for every path that makes one from
    data: one per ingested update, per history row read, per bus message."""
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
    """`Driver(...)` made as its fields (see new_location): a store's commit makes one for
    every driver it advances."""
    made = _DRIVER_FIELDS()
    made.driver_id = driver_id
    made.status = status
    made.location = location
    made.last_seen_at_ns = last_seen_at_ns
    made.__class__ = Driver
    driver: Driver = made
    return driver
