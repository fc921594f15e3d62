"""LocationUpdate conversion for StreamLocation: the message built in place is the message the
wire always had, and a fan-out message is shared only for the very same Location object."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given
from hypothesis import strategies as st

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.domain import Location
from driver_service.wire import LocationMessages, location_to_pb, pb_to_location
from tests.helpers import strategies as ds

AT = 1_764_000_000_123_456_789


def reference(location: Location) -> pb.LocationUpdate:
    """The construction location_to_pb used before it set the timestamp in place."""
    seconds, nanos = divmod(location.recorded_at_ns, 1_000_000_000)
    return pb.LocationUpdate(
        driver_id=location.driver_id,
        latitude=location.latitude,
        longitude=location.longitude,
        speed_mps=location.speed_mps,
        heading_degrees=location.heading_degrees,
        timestamp=Timestamp(seconds=seconds, nanos=nanos),
    )


@given(
    ds.driver_ids(),
    ds.latitudes(),
    ds.longitudes(),
    st.floats(min_value=0.0, max_value=1e6),
    ds.headings(),
    st.integers(min_value=-(2**62), max_value=2**62),
)
@example("d1", 0.0, 0.0, 0.0, 0.0, 0)  # every field at its default: the timestamp still set
def test_same_bytes_as_before(
    driver_id: str, lat: float, lon: float, speed: float, heading: float, at_ns: int
) -> None:
    location = Location(driver_id, lat, lon, speed, heading, at_ns)
    msg = location_to_pb(location)
    assert msg.SerializeToString() == reference(location).SerializeToString()
    assert msg.HasField("timestamp")
    assert pb_to_location(msg).recorded_at_ns == at_ns


def test_one_message_per_location_object() -> None:
    messages = LocationMessages()
    a = Location("a", 52.5, 13.4, 5.0, 90.0, AT)
    first = messages.of(a)
    assert messages.of(a) is first, "every watcher of one update gets the same message"
    assert first == location_to_pb(a)
    # An equal but distinct Location is built again, never confused with the cached one.
    twin = Location("a", 52.5, 13.4, 5.0, 90.0, AT)
    assert messages.of(twin) is not first
    assert messages.of(twin) == first


def test_alternating_drivers_each_get_their_own_message() -> None:
    messages = LocationMessages()
    a = Location("a", 1.0, 1.0, 1.0, 1.0, AT)
    b = Location("b", 2.0, 2.0, 2.0, 2.0, AT + 1)
    for _ in range(3):
        assert pb_to_location(messages.of(a)) == a
        assert pb_to_location(messages.of(b)) == b
