"""GetDriver responses (messages and encoded bytes) are reused only while the driver's state is
the same object, and the bytes are protobuf's own encoding."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.domain import Driver, Location, Status
from driver_service.wire import DriverResponses, driver_to_pb
from tests.helpers import strategies

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


@settings(max_examples=200)
@given(
    driver_id=strategies.driver_ids(),
    status=st.sampled_from(list(Status)),
    latitude=strategies.latitudes(),
    longitude=strategies.longitudes(),
    at_ns=strategies.timestamps_ns(),
    located=st.booleans(),
)
def test_encoded_reply_is_protobufs_own_encoding(
    driver_id: str, status: Status, latitude: float, longitude: float, at_ns: int, located: bool
) -> None:
    """The bytes GetDriver sends are exactly protobuf's serialization of the response built
    for the same driver (and decode back to it), whatever the driver's state."""
    location = Location(driver_id, latitude, longitude, 1.0, 2.0, at_ns) if located else None
    state = Driver(driver_id, status, location, at_ns)
    responses = DriverResponses()
    encoded = responses.encoded(state)
    assert encoded == driver_to_pb(state).SerializeToString()
    assert pb.GetDriverResponse.FromString(encoded) == driver_to_pb(state)
    assert responses.encoded(state) is encoded  # kept while the state is the same


def test_encoded_reply_never_outlives_its_state() -> None:
    responses = DriverResponses()
    first = driver(52.5)
    kept = responses.encoded(first)
    moved = driver(52.6)
    assert responses.encoded(moved) == driver_to_pb(moved).SerializeToString() != kept
    busy = driver(52.6, Status.BUSY)
    assert pb.GetDriverResponse.FromString(responses.encoded(busy)).status == "BUSY"
    responses.forget("d1")
    assert "d1" not in responses._encoded
    assert "d1" not in responses._built


def test_encoded_bounded() -> None:
    responses = DriverResponses(max_entries=10)
    for n in range(25):
        responses.encoded(driver(1.0, driver_id=f"d{n}"))
    assert len(responses._encoded) <= 10
