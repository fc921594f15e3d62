"""Hypothesis strategies for driver-service inputs, one function per kind of value (attrs-style)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from driver_service.domain.validation import (
    DEFAULT_RULES,
    EARLIEST_TIMESTAMP_NS,
    MAX_DRIVER_ID_LENGTH,
)

#: A fixed "now" (2024-06-01T00:00:00Z) so examples replay identically.
NOW_NS = 1_717_200_000 * 10**9
LATEST_VALID_NS = NOW_NS + DEFAULT_RULES.max_future_skew_ns

ALLOWED_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-"
ID_START_CHARS = ALLOWED_ID_CHARS[:62]
NON_FINITE = (math.nan, math.inf, -math.inf)


def driver_ids() -> st.SearchStrategy[str]:
    """Ids the service must accept: a letter or digit, then up to 127 allowed characters."""
    return st.builds(
        lambda first, rest: first + rest,
        st.sampled_from(ID_START_CHARS),
        st.text(alphabet=ALLOWED_ID_CHARS, max_size=MAX_DRIVER_ID_LENGTH - 1),
    )


def bad_charset_driver_ids() -> st.SearchStrategy[str]:
    """Ids of a valid length that contain a forbidden character or start with punctuation."""
    forbidden = st.characters(exclude_characters=ALLOWED_ID_CHARS)
    inserted = st.builds(
        lambda valid, bad, at: valid[:at] + bad + valid[at:],
        st.text(alphabet=ALLOWED_ID_CHARS, min_size=1, max_size=40),
        forbidden,
        st.integers(min_value=0, max_value=40),
    )
    leading_punctuation = st.builds(
        lambda first, rest: first + rest,
        st.sampled_from("._:@-"),
        st.text(alphabet=ALLOWED_ID_CHARS, max_size=40),
    )
    return st.one_of(inserted, leading_punctuation)


def too_long_driver_ids() -> st.SearchStrategy[str]:
    return st.integers(min_value=MAX_DRIVER_ID_LENGTH + 1, max_value=4 * MAX_DRIVER_ID_LENGTH).map(
        lambda n: "d" * n
    )


def latitudes() -> st.SearchStrategy[float]:
    return st.floats(min_value=-90.0, max_value=90.0)


def longitudes() -> st.SearchStrategy[float]:
    return st.floats(min_value=-180.0, max_value=180.0)


def speeds() -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, allow_infinity=False)


def headings() -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=360.0)


def timestamps_ns() -> st.SearchStrategy[int]:
    """From 2000-01-01 up to the allowed clock skew into the future, both ends included."""
    return st.one_of(
        st.just(EARLIEST_TIMESTAMP_NS),
        st.just(LATEST_VALID_NS),
        st.integers(min_value=EARLIEST_TIMESTAMP_NS, max_value=LATEST_VALID_NS),
    )


def valid_location_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments of validate_location (without now_ns) that must be accepted."""
    return st.fixed_dictionaries(
        {
            "driver_id": driver_ids(),
            "latitude": latitudes(),
            "longitude": longitudes(),
            "speed_mps": speeds(),
            "heading_degrees": headings(),
            "recorded_at_ns": timestamps_ns(),
        }
    )


def outside(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats strictly outside [low, high], infinities included."""
    # nextafter, not exclude_max: Hypothesis treats -0.0 as below 0.0, Python does not.
    return st.one_of(
        st.floats(max_value=math.nextafter(low, -math.inf)),
        st.floats(min_value=math.nextafter(high, math.inf)),
    )


def non_finite() -> st.SearchStrategy[float]:
    return st.sampled_from(NON_FINITE)


def invalid_field() -> st.SearchStrategy[tuple[str, object, str]]:
    """(argument, bad value, word the error message must contain) for each broken rule."""

    def case(
        argument: str, values: st.SearchStrategy[Any], named: str | None = None
    ) -> st.SearchStrategy[tuple[str, object, str]]:
        return values.map(lambda v: (argument, v, named or argument))

    return st.one_of(
        case("latitude", outside(-90.0, 90.0)),
        case("latitude", non_finite()),
        case("longitude", outside(-180.0, 180.0)),
        case("longitude", non_finite()),
        case("speed_mps", st.floats(max_value=math.nextafter(0.0, -math.inf))),
        case("speed_mps", non_finite()),
        case("heading_degrees", outside(0.0, 360.0)),
        case("heading_degrees", non_finite()),
        case(
            "recorded_at_ns",
            st.integers(max_value=EARLIEST_TIMESTAMP_NS - 1),
            "timestamp",
        ),
        case(
            "recorded_at_ns",
            st.integers(min_value=LATEST_VALID_NS + 1, max_value=LATEST_VALID_NS + 10**18),
            "timestamp",
        ),
        case("driver_id", st.just(""), "driver_id"),
        case("driver_id", too_long_driver_ids(), "driver_id"),
        case("driver_id", bad_charset_driver_ids(), "driver_id"),
    )


def status_strings_not_allowed() -> st.SearchStrategy[str]:
    """Any text except the three exact status names (case variants included)."""
    allowed = {"AVAILABLE", "BUSY", "OFFLINE"}
    case_variants = st.sampled_from(sorted(allowed)).flatmap(
        lambda s: st.sampled_from([s.lower(), s.title(), f" {s}", f"{s} ", s[:-1]])
    )
    return st.one_of(case_variants, st.text().filter(lambda s: s not in allowed))
