"""Trip and stop segmentation on recorded-style routes: what a fleet operator reads in a trip
report must survive GPS jitter, tunnels, silences and glitches."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver_service.domain import InvalidInput, Location
from driver_service.domain.trips import (
    DEFAULT_THRESHOLDS,
    NANOS,
    TripDetector,
    TripsAndStops,
    TripThresholds,
    detect_trips,
    summarize,
)
from tests.helpers.synthetic_routes import START_NS, Route


def at_s(fix: Location) -> float:
    """Seconds since the route began."""
    return (fix.recorded_at_ns - START_NS) / NANOS


def assert_alternating(result: TripsAndStops) -> None:
    """Trips and stops alternate without overlap, each starting where the previous ended."""
    segments = sorted(
        [(t.start.recorded_at_ns, t.end.recorded_at_ns, "trip") for t in result.trips]
        + [(s.start.recorded_at_ns, s.end.recorded_at_ns, "stop") for s in result.stops]
    )
    for (_, end, kind), (start, _, next_kind) in itertools.pairwise(segments):
        assert end == start
        assert kind != next_kind
    for start, end, _ in segments:
        assert start <= end


def drive_stop_drive(report_speed: bool) -> Route:
    return (
        Route(report_speed=report_speed)
        .drive(600, 12.0, 45.0)
        .park(900, jitter_m=8.0)
        .drive(600, 12.0, 200.0)
    )


def test_drive_stop_drive_with_reported_speed() -> None:
    result = detect_trips(drive_stop_drive(report_speed=True).fixes)

    assert len(result.trips) == 2
    assert len(result.stops) == 1
    first, second = result.trips
    (stop,) = result.stops
    assert at_s(first.start) == 0
    assert 600 <= at_s(first.end) <= 602
    assert at_s(stop.start) == at_s(first.end)
    assert at_s(stop.end) == 1500 == at_s(second.start)
    assert at_s(second.end) == 2100
    for trip in result.trips:
        assert trip.distance_m == pytest.approx(7200, rel=0.01)
        assert trip.max_speed_mps == pytest.approx(12.0)
        assert trip.average_speed_mps == pytest.approx(12.0, rel=0.01)
    assert_alternating(result)

    summary = summarize(result)
    assert summary.trip_count == 2
    assert summary.stop_count == 1
    assert summary.distance_m == pytest.approx(14400, rel=0.01)
    assert summary.driving_ns == pytest.approx(1200 * NANOS, abs=2 * NANOS)
    assert summary.stopped_ns == pytest.approx(900 * NANOS, abs=2 * NANOS)
    assert summary.max_speed_mps == pytest.approx(12.0)


def test_drive_stop_drive_with_speed_derived_from_positions() -> None:
    """A device that reports no speed: the stop is still found, its ends within a minute,
    the distance within a few percent."""
    result = detect_trips(drive_stop_drive(report_speed=False).fixes)

    assert len(result.trips) == 2
    assert len(result.stops) == 1
    (stop,) = result.stops
    assert at_s(stop.start) == pytest.approx(600, abs=60)
    assert at_s(stop.end) == pytest.approx(1500, abs=60)
    for trip in result.trips:
        assert trip.distance_m == pytest.approx(7200, rel=0.03)
    assert_alternating(result)


@pytest.mark.parametrize("report_speed", [True, False])
@pytest.mark.parametrize("jitter_m", [5.0, 15.0, 30.0])
def test_jitter_at_a_stop_invents_no_trip_and_no_distance(
    report_speed: bool, jitter_m: float
) -> None:
    route = Route(report_speed=report_speed, seed=int(jitter_m)).park(3600, jitter_m=jitter_m)

    result = detect_trips(route.fixes)

    assert result.trips == []
    assert len(result.stops) == 1
    assert at_s(result.stops[0].start) == 0
    assert at_s(result.stops[0].end) == 3600
    assert summarize(result).distance_m == 0


def test_stray_fixes_at_a_stop_neither_end_it_nor_make_a_trip() -> None:
    """Multipath in a street canyon: a fix 40-200 m off every few minutes, its derived
    speed far above walking pace."""
    route = Route(report_speed=False).drive(600, 12.0, 90.0)
    for offset in (40.0, 80.0, 120.0, 200.0, 60.0, 150.0):
        route.park(170, jitter_m=8.0).glitch(offset, bearing_deg=offset)
    route.park(120, jitter_m=8.0).drive(600, 12.0, 270.0)

    result = detect_trips(route.fixes)

    assert len(result.trips) == 2
    assert len(result.stops) == 1
    assert at_s(result.stops[0].start) == pytest.approx(600, abs=60)
    assert at_s(result.stops[0].end) == pytest.approx(600 + 6 * 171 + 120, abs=60)
    assert summarize(result).distance_m == pytest.approx(14400, rel=0.03)


@pytest.mark.parametrize("report_speed", [True, False])
def test_a_tunnel_gap_is_part_of_the_trip_not_a_stop(report_speed: bool) -> None:
    """Four minutes without a fix while driving 3.6 km: one trip, its straight-line leg
    counted, and no stop."""
    route = (
        Route(report_speed=report_speed)
        .drive(600, 15.0, 90.0)
        .silence(240, moved_m=3600.0, bearing_deg=90.0)
        .drive(600, 15.0, 90.0)
    )

    result = detect_trips(route.fixes)

    assert result.stops == []
    (trip,) = result.trips
    assert at_s(trip.start) == 0
    assert at_s(trip.end) == at_s(route.fixes[-1])
    assert trip.distance_m == pytest.approx(9000 + 3600 + 9000, rel=0.01)


def test_a_tunnel_shorter_than_a_stop_while_standing_still_is_no_stop() -> None:
    """Stuck in a tunnel for four minutes (below min_stop_duration): still one trip."""
    route = Route().drive(600, 15.0, 90.0).silence(240).drive(600, 15.0, 90.0)

    result = detect_trips(route.fixes)

    assert result.stops == []
    assert len(result.trips) == 1


@pytest.mark.parametrize("report_speed", [True, False])
def test_a_gap_longer_than_max_gap_is_a_stop(report_speed: bool) -> None:
    """The app was off for 30 minutes between two drives: the first trip ends at the last
    fix before the silence, the stop lasts until the driver reappears, and the silence
    adds no distance even though the driver reappears elsewhere."""
    route = (
        Route(report_speed=report_speed)
        .drive(600, 15.0, 90.0)
        .silence(1800, moved_m=2000.0, bearing_deg=0.0)
        .drive(600, 15.0, 270.0)
    )

    result = detect_trips(route.fixes)

    assert len(result.trips) == 2
    (stop,) = result.stops
    assert at_s(result.trips[0].end) == 600 == at_s(stop.start)
    assert at_s(stop.end) == pytest.approx(2400, abs=5)
    assert summarize(result).distance_m == pytest.approx(18000, rel=0.01)
    assert_alternating(result)


@pytest.mark.parametrize("report_speed", [True, False])
def test_an_impossible_jump_is_filtered(report_speed: bool) -> None:
    route = (
        Route(report_speed=report_speed)
        .drive(600, 15.0, 90.0)
        .glitch(5000.0, bearing_deg=10.0)
        .drive(600, 15.0, 90.0)
    )

    result = detect_trips(route.fixes)

    (trip,) = result.trips
    assert result.stops == []
    assert result.jumps_dropped == 1
    assert trip.distance_m == pytest.approx(18000 + 15, rel=0.01)
    assert trip.max_speed_mps < 300 / 3.6


def test_a_glitch_as_first_fix_does_not_hold_the_track() -> None:
    """The range begins with a cold-start fix 20 km off: the track continues from the
    fixes that agree with each other, and the trip starts there."""
    route = Route().drive(600, 15.0, 90.0)
    glitch = Route(lat=52.7, lon=13.405).fixes[0]
    fixes = [
        Location(glitch.driver_id, glitch.latitude, glitch.longitude, 0.0, 0.0, START_NS - NANOS),
        *route.fixes,
    ]

    result = detect_trips(fixes)

    (trip,) = result.trips
    assert trip.start == route.fixes[0]
    assert trip.distance_m == pytest.approx(9000, rel=0.01)


def test_a_red_light_does_not_split_a_trip() -> None:
    route = Route().drive(600, 12.0, 0.0).park(120, jitter_m=8.0).drive(600, 12.0, 0.0)

    result = detect_trips(route.fixes)

    assert result.stops == []
    (trip,) = result.trips
    assert trip.distance_m == pytest.approx(14400, rel=0.01)


def test_a_shorter_min_stop_duration_makes_the_red_light_a_stop() -> None:
    route = Route().drive(600, 12.0, 0.0).park(120, jitter_m=8.0).drive(600, 12.0, 0.0)

    result = detect_trips(route.fixes, TripThresholds(min_stop_duration_ns=60 * NANOS))

    assert len(result.trips) == 2
    assert len(result.stops) == 1


def test_a_parking_manoeuvre_is_part_of_the_stop() -> None:
    """90 m across a car park in 30 s (under min_trip_distance and min_trip_duration)
    between two stays: one stop, no trip, no distance."""
    route = (
        Route()
        .drive(600, 12.0, 0.0)
        .park(600, jitter_m=8.0)
        .drive(30, 3.0, 90.0)
        .park(600, jitter_m=8.0)
    )

    result = detect_trips(route.fixes)

    assert len(result.trips) == 1
    (stop,) = result.stops
    assert at_s(stop.start) == pytest.approx(600, abs=2)
    assert at_s(stop.end) == at_s(route.fixes[-1])
    assert summarize(result).distance_m == pytest.approx(7200, rel=0.01)


def test_a_short_move_is_a_trip_once_it_covers_min_trip_distance() -> None:
    route = (
        Route()
        .drive(600, 12.0, 0.0)
        .park(600, jitter_m=8.0)
        .drive(30, 3.0, 90.0)
        .park(600, jitter_m=8.0)
    )

    result = detect_trips(route.fixes, TripThresholds(min_trip_distance_m=50.0))

    assert len(result.trips) == 2
    assert result.trips[1].distance_m == pytest.approx(90, abs=15)


def test_empty_and_single_fix() -> None:
    assert detect_trips([]) == TripsAndStops()
    assert detect_trips(Route().fixes) == TripsAndStops()
    summary = summarize(TripsAndStops())
    assert (summary.trip_count, summary.distance_m, summary.driving_ns) == (0, 0.0, 0)


def test_fixes_out_of_order_are_a_bug_and_duplicates_are_ignored() -> None:
    fixes = Route().drive(10, 12.0, 0.0).fixes
    with pytest.raises(ValueError, match="fix-time order"):
        detect_trips([fixes[1], fixes[0]])
    assert detect_trips([fixes[0], fixes[0], *fixes[1:]]) == detect_trips(fixes)


@given(cuts=st.lists(st.integers(min_value=0, max_value=2700), max_size=8))
def test_fed_in_chunks_the_answer_is_the_same(cuts: list[int]) -> None:
    fixes = DRIVE_STOP_DRIVE
    detector = TripDetector()
    bounds = [0, *sorted(cuts), len(fixes)]
    for low, high in itertools.pairwise(bounds):
        detector.add_all(fixes[low:high])
    assert detector.finish() == detect_trips(fixes)


DRIVE_STOP_DRIVE = drive_stop_drive(report_speed=False).fixes


def test_defaults_are_traccars_where_traccar_has_one() -> None:
    t = DEFAULT_THRESHOLDS
    assert t.min_stop_duration_ns == 300 * NANOS  # report.trip.minimalParkingDuration
    assert t.min_trip_distance_m == 500  # report.trip.minimalTripDistance
    assert t.min_trip_duration_ns == 300 * NANOS  # report.trip.minimalTripDuration
    assert t.max_gap_ns == 600 * NANOS  # minimalNoDataDuration is 1 h: see the docstring
    assert t.max_speed_mps == pytest.approx(300 / 3.6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_stop_duration_ns", 0),
        ("min_stop_duration_ns", -NANOS),
        ("min_stop_duration_ns", 8 * 86_400 * NANOS),
        ("max_gap_ns", 0),
        ("min_trip_duration_ns", -1),
        ("min_stop_duration_ns", 1.5),
        ("stop_speed_mps", -1.0),
        ("stop_speed_mps", float("nan")),
        ("stop_speed_mps", 100.0),  # above max_speed_mps
        ("max_speed_mps", float("inf")),
        ("min_trip_distance_m", -5.0),
        ("jitter_m", 100.0),  # beyond stop_radius_m
        ("stop_radius_m", float("nan")),
        ("departure_fixes", 0),
        ("departure_fixes", True),
    ],
)
def test_nonsense_thresholds_are_invalid_input(field: str, value: object) -> None:
    with pytest.raises(InvalidInput):
        TripThresholds(**{field: value})  # type: ignore[arg-type]


def test_a_driver_day_segments_into_its_trips() -> None:
    """86,400 fixes at 1 Hz in one pass. How fast is the bench's `history` part (GetTrips of a
    driver-day <= 1 s), not this test's: it runs beside other tiers on a busy machine."""
    route = Route(report_speed=False, seed=7)
    while len(route.fixes) < 86_400:
        bearing = route.rng.uniform(0, 360)
        route.drive(1800, 13.0, bearing).park(600, jitter_m=8.0).drive(40, 2.0, bearing)
        route.park(120, jitter_m=8.0)
    fixes = route.fixes[:86_400]

    result = detect_trips(fixes)

    assert len(result.trips) >= 30
