"""Location and Driver are frozen dataclasses, built by their constructors or as their fields
(`new_location`, `new_driver`: every path that makes them from data), and must behave as
frozen dataclasses either way."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from driver_service.domain import Driver, Location, Status, new_driver, new_location


def _location(**changes: object) -> Location:
    fields: dict[str, object] = {
        "driver_id": "d-1",
        "latitude": 52.5,
        "longitude": 13.4,
        "speed_mps": 9.5,
        "heading_degrees": 90.0,
        "recorded_at_ns": 1_700_000_000_000_000_000,
    }
    fields.update(changes)
    return Location(**fields)  # type: ignore[arg-type]


def test_location_sets_every_field_by_position_and_by_name() -> None:
    by_position = Location("d-1", 52.5, 13.4, 9.5, 90.0, 1_700_000_000_000_000_000)
    assert by_position == _location()
    assert dataclasses.astuple(by_position) == (
        "d-1",
        52.5,
        13.4,
        9.5,
        90.0,
        1_700_000_000_000_000_000,
    )
    assert hash(by_position) == hash(_location())
    assert by_position != _location(latitude=52.6)
    assert repr(by_position).startswith("Location(driver_id='d-1', latitude=52.5")


def test_location_and_driver_stay_frozen() -> None:
    location = _location()
    driver = Driver("d-1", Status.BUSY, location, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        location.latitude = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        driver.status = Status.OFFLINE  # type: ignore[misc]
    with pytest.raises(TypeError):
        Location("d-1", 52.5)  # type: ignore[call-arg]


def test_replace_pickle_and_match_work_as_for_any_dataclass() -> None:
    driver = Driver("d-1", Status.AVAILABLE, _location(), 7)
    moved = dataclasses.replace(driver, location=_location(latitude=1.0), last_seen_at_ns=8)
    assert moved.location == _location(latitude=1.0)
    assert (moved.driver_id, moved.status, moved.last_seen_at_ns) == ("d-1", Status.AVAILABLE, 8)
    assert pickle.loads(pickle.dumps(moved)) == moved
    match driver:
        case Driver(driver_id, status, Location(latitude=latitude), seen):
            assert (driver_id, status, latitude, seen) == ("d-1", Status.AVAILABLE, 52.5, 7)
        case _:
            pytest.fail("Driver did not match its fields")
    assert [f.name for f in dataclasses.fields(Location)] == list(Location.__match_args__)


def test_objects_made_as_their_fields_are_the_constructors_objects() -> None:
    made = new_location("d-1", 52.5, 13.4, 9.5, 90.0, 1_700_000_000_000_000_000)
    assert type(made) is Location
    assert made == _location()
    assert hash(made) == hash(_location())
    assert repr(made) == repr(_location())
    assert dataclasses.astuple(made) == dataclasses.astuple(_location())
    assert dataclasses.replace(made, latitude=1.0) == _location(latitude=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.latitude = 1.0  # type: ignore[misc]
    driver = new_driver("d-1", Status.BUSY, made, 5)
    assert type(driver) is Driver
    assert driver == Driver("d-1", Status.BUSY, _location(), 5)
    assert hash(driver) == hash(Driver("d-1", Status.BUSY, _location(), 5))
    assert pickle.loads(pickle.dumps(driver)) == driver
    with pytest.raises(dataclasses.FrozenInstanceError):
        driver.status = Status.OFFLINE  # type: ignore[misc]
    assert new_driver("d-2", Status.OFFLINE, None, 0).location is None
