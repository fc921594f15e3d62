"""GetDriver responses are reused only while the driver's state is the same object."""

from __future__ import annotations

from driver_service.domain import Driver, Location, Status
from driver_service.wire import DriverResponses, driver_to_pb

AT = 1_764_000_000_000_000_000


def driver(latitude: float, status: Status = Status.AVAILABLE, driver_id: str = "d1") -> Driver:
    location = Location(driver_id, latitude, 13.4, 5.0, 90.0, AT)
    return Driver(driver_id, status, location, AT)


def test_same_state_same_response_new_state_new_response() -> None:
    responses = DriverResponses()
    first = driver(52.5)
    assert responses.of(first) is responses.of(first)
    assert responses.of(first) == driver_to_pb(first)
    moved = driver(52.6)
    assert responses.of(moved).latitude == 52.6
    busy = driver(52.6, Status.BUSY)
    assert responses.of(busy).status == "BUSY"
    # An equal but distinct Driver (e.g. read back from PostgreSQL) is simply rebuilt.
    again = driver(52.6, Status.BUSY)
    assert responses.of(again) == responses.of(busy)


def test_bounded() -> None:
    responses = DriverResponses(max_entries=10)
    for n in range(25):
        d = driver(1.0, driver_id=f"d{n}")
        assert responses.of(d).driver_id == f"d{n}"
    assert len(responses._built) <= 10
