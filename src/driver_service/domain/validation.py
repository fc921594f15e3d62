"""Input rules shared by every RPC; they raise InvalidInput with a message a caller can act on."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from driver_service.domain.errors import InvalidInput
from driver_service.domain.model import Location, Status, new_location

MAX_DRIVER_ID_LENGTH = 128
_DRIVER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
#: GPS fixes older than this are not plausible (and catch an unset clock at the epoch).
EARLIEST_TIMESTAMP_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z
NANOS = 10**9


@dataclass(frozen=True, slots=True)
class LocationRules:
    """Limits that depend on deployment, not on geometry."""

    max_future_skew_ns: int = 5 * 60 * NANOS


DEFAULT_RULES = LocationRules()

#: One fix as the wire carries it: driver id, latitude, longitude, speed, heading and the
#: timestamp in ns (None when unset, meaning "now").
Fix = tuple[str, float, float, float, float, int | None]

#: Ids that passed validate_driver_id lately: a fleet sends the same ids all day, and a set
#: lookup costs a fraction of the regular expression. Bounded; cleared when full.
_VALID_IDS: set[str] = set()
_VALID_IDS_MAX = 100_000


def validate_driver_id(driver_id: str, field: str = "driver_id") -> str:
    if driver_id in _VALID_IDS:
        return driver_id
    if not driver_id:
        raise InvalidInput(f"{field} is required")
    if len(driver_id) > MAX_DRIVER_ID_LENGTH:
        raise InvalidInput(f"{field} is longer than {MAX_DRIVER_ID_LENGTH} characters")
    if not _DRIVER_ID_RE.match(driver_id):
        raise InvalidInput(
            f"{field} may contain only letters, digits and . _ : @ - "
            "and must start with a letter or digit"
        )
    if len(_VALID_IDS) >= _VALID_IDS_MAX:
        _VALID_IDS.clear()
    _VALID_IDS.add(driver_id)
    return driver_id


def parse_status(value: str, field: str = "new_status") -> Status:
    try:
        return Status(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        shown = value if len(value) <= 32 else value[:32] + "…"
        raise InvalidInput(f"{field} {shown!r} is not one of {allowed}") from None


def validate_location(
    driver_id: str,
    latitude: float,
    longitude: float,
    speed_mps: float,
    heading_degrees: float,
    recorded_at_ns: int,
    now_ns: int,
    rules: LocationRules = DEFAULT_RULES,
) -> Location:
    """Return a Location if every field is plausible, else raise InvalidInput naming the field.
    A plausible update passes one inlined test (a range test is False for NaN, and the
    bounds exclude infinities: the same rules as the checks below, which name the field)."""
    if (
        -90.0 <= latitude <= 90.0
        and -180.0 <= longitude <= 180.0
        and 0.0 <= speed_mps < math.inf
        and 0.0 <= heading_degrees <= 360.0
        and EARLIEST_TIMESTAMP_NS <= recorded_at_ns <= now_ns + rules.max_future_skew_ns
        and driver_id in _VALID_IDS
    ):
        return new_location(
            driver_id, latitude, longitude, speed_mps, heading_degrees, recorded_at_ns
        )
    if driver_id not in _VALID_IDS:
        validate_driver_id(driver_id)
    if not (math.isfinite(latitude) and -90.0 <= latitude <= 90.0):
        raise InvalidInput("latitude must be a finite number between -90 and 90")
    if not (math.isfinite(longitude) and -180.0 <= longitude <= 180.0):
        raise InvalidInput("longitude must be a finite number between -180 and 180")
    if not (math.isfinite(speed_mps) and speed_mps >= 0.0):
        raise InvalidInput("speed_mps must be a finite number >= 0")
    if not (math.isfinite(heading_degrees) and 0.0 <= heading_degrees <= 360.0):
        raise InvalidInput("heading_degrees must be a finite number between 0 and 360")
    if recorded_at_ns < EARLIEST_TIMESTAMP_NS:
        raise InvalidInput("timestamp is before 2000-01-01")
    if recorded_at_ns > now_ns + rules.max_future_skew_ns:
        raise InvalidInput(
            f"timestamp is more than {rules.max_future_skew_ns // NANOS} s in the future"
        )
    return new_location(driver_id, latitude, longitude, speed_mps, heading_degrees, recorded_at_ns)


def validate_locations(
    fixes: Iterable[Fix], now_ns: int, rules: LocationRules = DEFAULT_RULES
) -> tuple[list[Location], list[InvalidInput]]:
    """The same rules as validate_location over many fixes: the valid ones as Locations, in
    order, and an InvalidInput for each other one. The checks are inlined (a range test is
    False for NaN, and the bounds exclude infinities), so a valid fix costs no call; a
    rejected one goes through validate_location for the error it names."""
    valid: list[Location] = []
    rejected: list[InvalidInput] = []
    known = _VALID_IDS
    latest_ns = now_ns + rules.max_future_skew_ns
    inf = math.inf
    for driver_id, lat, lon, speed, heading, given_ns in fixes:
        at_ns = now_ns if given_ns is None else given_ns
        if (
            (driver_id in known or _valid_id(driver_id))
            and -90.0 <= lat <= 90.0
            and -180.0 <= lon <= 180.0
            and 0.0 <= speed < inf
            and 0.0 <= heading <= 360.0
            and EARLIEST_TIMESTAMP_NS <= at_ns <= latest_ns
        ):
            valid.append(new_location(driver_id, lat, lon, speed, heading, at_ns))
            continue
        try:
            valid.append(
                validate_location(driver_id, lat, lon, speed, heading, at_ns, now_ns, rules)
            )
        except InvalidInput as error:
            rejected.append(error)
    return valid, rejected


def _valid_id(driver_id: str) -> bool:
    try:
        validate_driver_id(driver_id)
    except InvalidInput:
        return False
    return True
