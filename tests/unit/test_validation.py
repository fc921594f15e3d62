"""Input rules of every RPC: what is accepted unchanged, and what is refused with a message
that names the offending field (callers fix their input from that message alone)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from driver_service.domain import (
    DEFAULT_RULES,
    InvalidInput,
    Location,
    LocationRules,
    Status,
    parse_status,
    validate_driver_id,
    validate_location,
)
from driver_service.domain.validation import EARLIEST_TIMESTAMP_NS, validate_locations
from tests.helpers import strategies as ds


@given(ds.valid_location_kwargs())
def test_valid_location_is_accepted_and_round_trips(kwargs: dict[str, Any]) -> None:
    location = validate_location(**kwargs, now_ns=ds.NOW_NS)

    assert location == Location(**kwargs)
    # Same objects, not just equal: nothing is rounded or clamped on the way.
    for name, value in kwargs.items():
        got = getattr(location, name)
        assert got == value
        assert type(got) is type(value)
        if isinstance(value, float):
            assert math.copysign(1.0, got) == math.copysign(1.0, value)


@given(ds.valid_location_kwargs(), ds.invalid_field())
@example(
    {
        "driver_id": "d1",
        "latitude": 0.0,
        "longitude": 0.0,
        "speed_mps": 0.0,
        "heading_degrees": 0.0,
        "recorded_at_ns": ds.NOW_NS,
    },
    ("heading_degrees", -math.ulp(0.0), "heading_degrees"),
)
def test_each_invalid_field_is_rejected_naming_the_field(
    kwargs: dict[str, Any], bad: tuple[str, object, str]
) -> None:
    argument, value, named = bad
    kwargs = {**kwargs, argument: value}

    with pytest.raises(InvalidInput) as info:
        validate_location(**kwargs, now_ns=ds.NOW_NS)

    assert named in str(info.value)


@given(
    ds.valid_location_kwargs(),
    st.sampled_from(["latitude", "longitude", "speed_mps", "heading_degrees"]),
    ds.non_finite(),
)
def test_non_finite_number_in_any_field_is_rejected(
    kwargs: dict[str, Any], field: str, value: float
) -> None:
    with pytest.raises(InvalidInput, match=field):
        validate_location(**{**kwargs, field: value}, now_ns=ds.NOW_NS)


def test_timestamp_bounds_are_inclusive_and_follow_the_rules() -> None:
    """The edges are exact: 2000-01-01 itself and now + skew itself are fine, one ns more is not."""
    base: dict[str, Any] = {
        "driver_id": "d1",
        "latitude": 1.0,
        "longitude": 2.0,
        "speed_mps": 3.0,
        "heading_degrees": 4.0,
    }
    now = ds.NOW_NS
    validate_location(**base, recorded_at_ns=EARLIEST_TIMESTAMP_NS, now_ns=now)
    validate_location(**base, recorded_at_ns=now + DEFAULT_RULES.max_future_skew_ns, now_ns=now)
    with pytest.raises(InvalidInput, match=r"timestamp is before 2000-01-01"):
        validate_location(**base, recorded_at_ns=EARLIEST_TIMESTAMP_NS - 1, now_ns=now)
    with pytest.raises(InvalidInput, match=r"timestamp is more than 300 s in the future"):
        validate_location(
            **base, recorded_at_ns=now + DEFAULT_RULES.max_future_skew_ns + 1, now_ns=now
        )

    strict = LocationRules(max_future_skew_ns=10**9)
    with pytest.raises(InvalidInput, match=r"more than 1 s in the future"):
        validate_location(**base, recorded_at_ns=now + 2 * 10**9, now_ns=now, rules=strict)


@given(ds.driver_ids())
def test_valid_driver_ids_are_returned_unchanged(driver_id: str) -> None:
    assert validate_driver_id(driver_id) == driver_id


@given(st.one_of(st.just(""), ds.too_long_driver_ids(), ds.bad_charset_driver_ids()))
def test_invalid_driver_ids_are_rejected_naming_the_field(driver_id: str) -> None:
    with pytest.raises(InvalidInput, match=r"^driver_id "):
        validate_driver_id(driver_id)
    with pytest.raises(InvalidInput, match=r"^watch\.driver_id "):
        validate_driver_id(driver_id, field="watch.driver_id")


def test_driver_id_length_limit_is_exact() -> None:
    assert validate_driver_id("a" * 128) == "a" * 128
    with pytest.raises(InvalidInput, match="longer than 128"):
        validate_driver_id("a" * 129)


@pytest.mark.parametrize("driver_id", ["d1\n", "d 1", "d1\x00", "-d1", "é"])
def test_driver_id_charset_edge_cases(driver_id: str) -> None:
    """A trailing newline must not slip past a `$`-anchored pattern."""
    with pytest.raises(InvalidInput, match="may contain only"):
        validate_driver_id(driver_id)


@pytest.mark.parametrize("status", list(Status))
def test_parse_status_accepts_the_three_statuses(status: Status) -> None:
    assert parse_status(status.value) is status


@given(ds.status_strings_not_allowed())
def test_parse_status_rejects_everything_else_listing_allowed_values(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_status(value)

    message = str(info.value)
    assert message.startswith("new_status ")
    assert "AVAILABLE, BUSY, OFFLINE" in message


def test_parse_status_truncates_a_huge_value_in_the_message() -> None:
    huge = "X" * 1_000_000

    with pytest.raises(InvalidInput) as info:
        parse_status(huge, field="status_change.new_status")

    message = str(info.value)
    assert len(message) < 200
    assert "X" * 32 + "…" in message
    assert "X" * 33 not in message
    assert message.startswith("status_change.new_status ")


_FIELDS = ("driver_id", "latitude", "longitude", "speed_mps", "heading_degrees", "recorded_at_ns")


def _one_by_one(fix: tuple[Any, ...]) -> Location | str:
    try:
        return validate_location(*fix, now_ns=ds.NOW_NS)
    except InvalidInput as error:
        return str(error)


@given(
    st.lists(
        st.one_of(
            ds.valid_location_kwargs(),
            st.builds(
                lambda kwargs, bad: {**kwargs, bad[0]: bad[1]},
                ds.valid_location_kwargs(),
                st.one_of(
                    st.tuples(st.sampled_from(_FIELDS[1:5]), ds.non_finite() | st.just(-400.0)),
                    st.tuples(st.just("driver_id"), st.sampled_from(["", "-x", "a" * 129])),
                    st.tuples(st.just("recorded_at_ns"), st.sampled_from([0, 2**62])),
                ),
            ),
        ),
        max_size=20,
    )
)
def test_validate_locations_decides_each_fix_as_validate_location_does(
    fixes: list[dict[str, Any]],
) -> None:
    """The batch path inlines the checks; it must accept and refuse exactly the same fixes,
    with the same messages, in order."""
    rows = [tuple(fix[name] for name in _FIELDS) for fix in fixes]
    valid, rejected = validate_locations(rows, ds.NOW_NS)

    expected = [_one_by_one(row) for row in rows]
    assert valid == [x for x in expected if isinstance(x, Location)]
    assert [str(e) for e in rejected] == [x for x in expected if isinstance(x, str)]


def test_validate_locations_reads_a_missing_timestamp_as_now() -> None:
    valid, rejected = validate_locations([("d1", 1.0, 2.0, 3.0, 4.0, None)], ds.NOW_NS)

    assert rejected == []
    assert valid == [Location("d1", 1.0, 2.0, 3.0, 4.0, ds.NOW_NS)]
