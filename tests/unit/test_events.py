"""ZoneTracker on routes: crossing, grazing and jittering on edges, dwell, zone changes
mid-route, deletion, online/offline and status — the events a consumer would see."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service.domain import InvalidInput, Location, Status
from driver_service.domain import events as events_module
from driver_service.domain.events import (
    DEFAULT_SETTLE_NS,
    NEW_DRIVER,
    Event,
    EventType,
    TrackerState,
    Visit,
    ZoneTracker,
    event_bodies,
    event_body,
    event_from_row,
    logged_events,
    parse_type_filter,
    stored_alike,
    sweep_stale,
    times_only,
)
from driver_service.domain.zones import Circle, PolygonShape, Where, Zone, ZoneIndex

S = 10**9
T0 = 1_800_000_000 * S
M_PER_DEG = 6_371_008.8 * math.pi / 180.0
LAT0, LON0 = 52.52, 13.40
KX = M_PER_DEG * math.cos(math.radians(LAT0))

ENTER, EXIT, DWELL = EventType.ZONE_ENTER, EventType.ZONE_EXIT, EventType.ZONE_DWELL
ONLINE, OFFLINE = EventType.DRIVER_ONLINE, EventType.DRIVER_OFFLINE


def fix(east_m: float, north_m: float, t_s: float, driver: str = "d1") -> Location:
    lat, lon = LAT0 + north_m / M_PER_DEG, LON0 + east_m / KX
    return Location(driver, lat, lon, 5.0, 90.0, T0 + int(t_s * S))


def square_zone(
    zone_id: str = "sq", west: float = 0, side: float = 1000, dwell_s: int = 0, version: int = 1
) -> Zone:
    corners = [(west, 0), (west + side, 0), (west + side, side), (west, side), (west, 0)]
    coords = [[[LON0 + e / KX, LAT0 + n / M_PER_DEG] for e, n in corners]]
    shape = PolygonShape(json.dumps({"type": "Polygon", "coordinates": coords}))
    return Zone(zone_id, zone_id, (), shape, dwell_ns=dwell_s * S, version=version)


def run(
    route: list[Location],
    zones: ZoneIndex,
    state: TrackerState = NEW_DRIVER,
    tracker: ZoneTracker | None = None,
) -> tuple[TrackerState, list[Event]]:
    tracker = tracker or ZoneTracker()
    events: list[Event] = []
    for location in route:
        state, emitted = tracker.on_location(state, location, zones)
        events.extend(emitted)
    return state, events


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.type.value, e.zone_id) for e in events]


SQUARE = ZoneIndex([square_zone()])


# --- crossing, grazing, jitter ------------------------------------------------------------


def test_a_route_across_a_zone_enters_then_exits_at_the_fixes_beyond_the_margin() -> None:
    route = [fix(x, 500, i) for i, x in enumerate(range(-200, 1300, 50))]
    _, events = run(route, SQUARE)
    assert kinds(events) == [("driver.online", ""), ("zone.enter", "sq"), ("zone.exit", "sq")]
    enter, exit_ = events[1], events[2]
    # First fix more than 20 m inside: x = 50; first more than 20 m outside: x = 1050.
    assert enter.location is not None
    assert enter.at_ns == fix(50, 500, 5).recorded_at_ns
    assert exit_.at_ns == fix(1050, 500, 25).recorded_at_ns
    assert enter.zone_version == 1


def test_a_route_grazing_the_edge_from_outside_emits_nothing() -> None:
    # Along the west edge, 10 m outside: within the band, never inside.
    route = [fix(-10, y, i) for i, y in enumerate(range(0, 1000, 25))]
    _, events = run(route, SQUARE)
    assert kinds(events) == [("driver.online", "")]


def test_a_route_grazing_just_inside_the_edge_enters_after_settling() -> None:
    # 10 m inside the west edge for a minute: never deep inside, but inside for 30 s.
    route = [fix(10, 500, t) for t in range(0, 60, 5)]
    _, events = run(route, SQUARE)
    assert kinds(events) == [("driver.online", ""), ("zone.enter", "sq")]
    assert events[1].at_ns == T0 + DEFAULT_SETTLE_NS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-19.0, 19.0), min_size=1, max_size=200))
def test_jitter_across_the_edge_never_flaps(offsets: list[float]) -> None:
    # A driver parked on the west edge whose fixes scatter +/-19 m across it, one a second,
    # crossing sides at least every 20 s: never an enter or an exit.
    route = []
    for i, x in enumerate(offsets):
        side = x if (i // 20) % 2 else -x
        route.append(fix(side if abs(side) > 0.5 else 1.0, 500, i))
    _, events = run(route, SQUARE)
    assert [e.type for e in events] == [ONLINE]


def test_jitter_after_entering_does_not_exit() -> None:
    inside = [fix(500, 500, 0)]
    jitter = [fix(1000 + (15 if i % 2 else -15), 500, 1 + i) for i in range(100)]
    _, events = run(inside + jitter, SQUARE)
    assert [e.type for e in events] == [ONLINE, ENTER]


def test_stopping_just_outside_exits_after_settling() -> None:
    route = [fix(500, 500, 0), *(fix(1010, 500, t) for t in range(10, 60, 5))]
    _, events = run(route, SQUARE)
    assert [e.type for e in events] == [ONLINE, ENTER, EXIT]
    assert events[-1].at_ns == T0 + (10 + 30) * S


def test_a_fix_back_inside_restarts_the_exit_count() -> None:
    route = [
        fix(500, 500, 0),
        fix(1010, 500, 10),  # outside, in the band: counting from 10 s
        fix(990, 500, 35),  # inside again: count cleared
        fix(1010, 500, 45),  # outside from 45 s
        fix(1010, 500, 70),  # only 25 s: still in
    ]
    state, events = run(route, SQUARE)
    assert [e.type for e in events] == [ONLINE, ENTER]
    assert state.visits[0].outside_since_ns == T0 + 45 * S


def test_a_circle_is_crossed_by_distance() -> None:
    zones = ZoneIndex([Zone("c", "", (), Circle(LAT0, LON0, 300.0))])
    route = [fix(0, y, i) for i, y in enumerate(range(-410, 411, 20))]
    _, events = run(route, zones)
    enter, exit_ = events[1], events[2]
    assert (enter.type, exit_.type) == (ENTER, EXIT)
    assert enter.at_ns == fix(0, -270, 7).recorded_at_ns  # first fix > 20 m inside 300 m
    assert exit_.at_ns == fix(0, 330, 37).recorded_at_ns  # first fix > 20 m beyond it


def test_adjacent_zones_read_exit_then_enter_in_one_update() -> None:
    zones = ZoneIndex([square_zone("a", 0, 1000), square_zone("b", 1000, 1000)])
    route = [fix(900, 500, 0), fix(1100, 500, 1)]
    _, events = run(route, zones)
    assert kinds(events) == [
        ("driver.online", ""),
        ("zone.enter", "a"),
        ("zone.exit", "a"),
        ("zone.enter", "b"),
    ]


def test_multipolygon_visits_one_member_then_the_other_as_one_zone() -> None:
    members = []
    for west in (0, 400):  # two squares 100 m apart: the gap is beyond both bands
        corners = [(west, 0), (west + 300, 0), (west + 300, 300), (west, 300), (west, 0)]
        members.append([[[LON0 + e / KX, LAT0 + n / M_PER_DEG] for e, n in corners]])
    shape = PolygonShape(json.dumps({"type": "MultiPolygon", "coordinates": members}))
    zones = ZoneIndex([Zone("m", "", (), shape)])
    route = [fix(x, 150, i) for i, x in enumerate([150, 350, 550])]
    _, events = run(route, zones)
    assert kinds(events)[1:] == [("zone.enter", "m"), ("zone.exit", "m"), ("zone.enter", "m")]


def test_a_hole_is_left_and_reentered() -> None:
    outer = [(0, 0), (1000, 0), (1000, 1000), (0, 1000), (0, 0)]
    hole = [(400, 400), (600, 400), (600, 600), (400, 600), (400, 400)]
    coords = [[[LON0 + e / KX, LAT0 + n / M_PER_DEG] for e, n in r] for r in (outer, hole)]
    zone = Zone("h", "", (), PolygonShape(json.dumps({"type": "Polygon", "coordinates": coords})))
    route = [fix(x, 500, i) for i, x in enumerate([200, 500, 800])]
    _, events = run(route, ZoneIndex([zone]))
    assert kinds(events)[1:] == [("zone.enter", "h"), ("zone.exit", "h"), ("zone.enter", "h")]


# --- ordering guard -------------------------------------------------------------------------


def test_a_fix_not_newer_than_the_last_one_changes_nothing() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(-500, 500, 10), SQUARE)
    for stale in (fix(500, 500, 10), fix(500, 500, 9)):
        after, events = tracker.on_location(state, stale, SQUARE)
        assert events == ()
        assert after is state


# --- dwell ----------------------------------------------------------------------------------


def test_dwell_fires_once_on_the_first_update_after_the_dwell_time() -> None:
    zones = ZoneIndex([square_zone(dwell_s=60)])
    route = [fix(500, 500, t) for t in (0, 30, 59, 61, 90, 300)]
    _, events = run(route, zones)
    assert [e.type for e in events] == [ONLINE, ENTER, DWELL]
    assert events[2].at_ns == T0 + 61 * S


def test_each_visit_gets_its_own_dwell() -> None:
    zones = ZoneIndex([square_zone(dwell_s=60)])
    visit = [fix(500, 500, 0), fix(500, 500, 70)]
    leave = [fix(2000, 500, 80)]
    again = [fix(500, 500, 100), fix(500, 500, 170)]
    _, events = run(visit + leave + again, zones)
    assert [e.type for e in events] == [ONLINE, ENTER, DWELL, EXIT, ENTER, DWELL]


def test_leaving_before_the_dwell_time_gives_no_dwell() -> None:
    zones = ZoneIndex([square_zone(dwell_s=60)])
    _, events = run([fix(500, 500, 0), fix(2000, 500, 50), fix(2000, 500, 100)], zones)
    assert DWELL not in [e.type for e in events]


def test_no_dwell_when_the_zone_has_none() -> None:
    _, events = run([fix(500, 500, t) for t in range(0, 3600, 600)], SQUARE)
    assert [e.type for e in events] == [ONLINE, ENTER]


# --- zone changes mid-route -----------------------------------------------------------------


def test_a_zone_created_mid_route_counts_from_the_next_update() -> None:
    tracker = ZoneTracker()
    state, events = tracker.on_location(NEW_DRIVER, fix(500, 500, 0), ZoneIndex())
    assert [e.type for e in events] == [ONLINE]
    state, events = tracker.on_location(state, fix(510, 500, 1), SQUARE)
    assert [e.type for e in events] == [ENTER]


def test_a_zone_moved_away_mid_route_exits_on_the_next_update() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(500, 500, 0), SQUARE)
    moved = SQUARE.with_zone(square_zone(west=5000, version=2))
    state, events = tracker.on_location(state, fix(510, 500, 1), moved)
    assert [(e.type, e.zone_deleted, e.zone_version) for e in events] == [(EXIT, False, 2)]
    assert state.visits == ()


def test_a_zone_grown_mid_route_keeps_the_visit_and_takes_the_new_dwell() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(500, 500, 0), SQUARE)
    changed = SQUARE.with_zone(square_zone(side=2000, dwell_s=30, version=2))
    state, events = tracker.on_location(state, fix(1500, 500, 40), changed)
    assert [(e.type, e.zone_version) for e in events] == [(DWELL, 2)]
    assert state.visits[0].zone_version == 2


def test_a_deleted_zone_exits_with_zone_deleted_on_the_next_update() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(500, 500, 0), SQUARE)
    state, events = tracker.on_location(state, fix(510, 500, 1), SQUARE.without_zone("sq"))
    assert [(e.type, e.zone_id, e.zone_deleted) for e in events] == [(EXIT, "sq", True)]
    assert state.visits == ()


def test_a_deleted_zone_not_yet_entered_is_dropped_silently() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(10, 500, 0), SQUARE)  # settling
    assert state.visits == (Visit("sq", False, T0, 1),)
    state, events = tracker.on_location(state, fix(10, 500, 1), ZoneIndex())
    assert events == ()
    assert state.visits == ()


# --- online / offline / status --------------------------------------------------------------


def test_offline_after_stale_after_then_online_on_the_next_update() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(500, 500, 0), SQUARE)
    stale_after = 120 * S
    same, event = sweep_stale(state, "d1", T0 + 120 * S, stale_after)
    assert event is None  # exactly stale_after: not yet (as dispatch decides)
    assert same is state
    state, event = sweep_stale(state, "d1", T0 + 121 * S, stale_after)
    assert event == Event(OFFLINE, "d1", T0 + 120 * S)
    assert sweep_stale(state, "d1", T0 + 999 * S, stale_after) == (state, None)  # once
    state, events = tracker.on_location(state, fix(500, 500, 500), SQUARE)
    # Back online, still inside: no second enter.
    assert [e.type for e in events] == [ONLINE]
    assert events[0].new_status is Status.AVAILABLE


def test_a_new_driver_sweeps_to_nothing() -> None:
    assert sweep_stale(NEW_DRIVER, "d1", T0, S) == (NEW_DRIVER, None)


def test_status_changes_emit_old_and_new() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(-500, 500, 0), SQUARE)
    state, events = tracker.on_status(state, "d1", Status.BUSY, T0 + S)
    assert events == (
        Event(
            EventType.DRIVER_STATUS_CHANGED,
            "d1",
            T0 + S,
            old_status=Status.AVAILABLE,
            new_status=Status.BUSY,
        ),
    )
    _, events = tracker.on_status(state, "d1", Status.BUSY, T0 + 2 * S)
    assert events == ()


def test_a_first_status_brings_the_driver_online_without_a_change() -> None:
    state, events = ZoneTracker().on_status(NEW_DRIVER, "d1", Status.BUSY, T0)
    assert events == (Event(ONLINE, "d1", T0, new_status=Status.BUSY),)
    assert state.online
    assert state.last_seen_ns == T0


def test_a_status_change_keeps_a_driver_from_going_stale() -> None:
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(-500, 500, 0), SQUARE)
    state, _ = tracker.on_status(state, "d1", Status.BUSY, T0 + 100 * S)
    assert sweep_stale(state, "d1", T0 + 150 * S, 120 * S)[1] is None


# --- state and filters ----------------------------------------------------------------------


def test_state_round_trips_through_json() -> None:
    zones = ZoneIndex([square_zone("a", dwell_s=10), square_zone("b", 1000)])
    state, _ = run([fix(500, 500, 0), fix(500, 500, 20), fix(1010, 500, 21)], zones)
    assert len(state.visits) == 2
    text = state.to_json()
    assert TrackerState.from_json(text) == state
    assert json.loads(text)["v"] == 1
    assert TrackerState.from_json(NEW_DRIVER.to_json()) == NEW_DRIVER


def test_a_state_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version 1"):
        TrackerState.from_json('{"v": 2}')


def test_a_replica_continuing_from_stored_state_emits_the_same_events() -> None:
    route = [fix(x, 500, i * 10) for i, x in enumerate(range(-100, 1200, 40))]
    _, together = run(route, SQUARE)
    half = len(route) // 2
    state, first = run(route[:half], SQUARE)
    _, second = run(route[half:], SQUARE, TrackerState.from_json(state.to_json()))
    assert first + second == together


@pytest.mark.parametrize(
    ("state", "moves_times_only"),
    [
        (TrackerState(10, 12, True, Status.AVAILABLE), True),
        (TrackerState(10, 10, True, Status.BUSY), True),
        (TrackerState(None, 10, True, Status.AVAILABLE), True),  # the row holds the fix time
        (TrackerState(10, 12, False, Status.AVAILABLE), False),  # offline: goes online
        (TrackerState(10, 12, True, None), False),  # no status yet
        (NEW_DRIVER, False),
        (TrackerState(10, 12, True, Status.AVAILABLE, (Visit("z", True, 5),)), False),
    ],
)
def test_times_only_names_the_states_a_newer_fix_moves_only_in_time(
    state: TrackerState, moves_times_only: bool
) -> None:
    """What a PostgreSQL commit leaves out of the evaluation is what the tracker, with no
    zone, would change only in its times (so not write) and log nothing for."""
    assert times_only(state) is moves_times_only
    if not moves_times_only:
        return
    before = events_module.with_times(state, 10, 12)  # the times of the driver's row
    tracker, nowhere = ZoneTracker(), ZoneIndex()
    for t in (11, 20, 10**15):
        newer = Location("d1", 1.0, 2.0, 3.0, 4.0, t)
        alone, logged = tracker.on_location(before, newer, nowhere)
        in_batch, logged_in_batch = tracker.on_locations_nowhere({"d1": before}, [newer], nowhere)
        assert (logged, logged_in_batch) == ((), [])
        for after in (alone, in_batch["d1"]):
            assert stored_alike(before, after)
            assert (after.last_fix_ns, after.last_seen_ns) == (t, max(t, 12))


# --- the settled memo (a fix that changes nothing skips the per-zone loop) --------------------


def test_a_fix_at_the_same_place_keeps_the_visits_as_they_are() -> None:
    tracker = ZoneTracker()
    zones = ZoneIndex([square_zone(dwell_s=60), square_zone("next", west=1000)])
    state, _ = tracker.on_location(NEW_DRIVER, fix(500, 500, 0), zones)
    assert state.settled is not None
    assert state.settled.until_ns == T0 + 60 * S  # the dwell is the next timer
    again, events = tracker.on_location(state, fix(501, 500, 1), zones)
    assert events == ()
    assert again.visits is state.visits  # the memo's path: nothing rebuilt
    assert (again.last_fix_ns, again.last_seen_ns) == (T0 + S, T0 + S)
    _, events = tracker.on_location(again, fix(502, 500, 60), zones)
    assert [e.type for e in events] == [DWELL]  # the timer is not skipped


def test_a_fix_that_moves_relative_to_one_zone_judges_only_that_zone() -> None:
    # Deep inside "sq" (entered, dwell pending), then into the band of "next": "sq"'s visit is
    # kept as it is (not judged again), "next" is judged and settles; the dwell still fires.
    tracker = ZoneTracker()
    zones = ZoneIndex([square_zone(dwell_s=60), square_zone("next", west=950, side=500)])
    state, _ = tracker.on_location(NEW_DRIVER, fix(900, 100, 0), zones)
    assert [v.zone_id for v in state.visits] == ["sq"]
    (inside,) = state.visits
    asked: list[str] = []
    getter = zones.zone_getter

    def spy(zone_id: str) -> Zone | None:
        asked.append(zone_id)
        return getter(zone_id)

    zones.zone_getter = spy
    moved, events = tracker.on_location(state, fix(960, 100, 1), zones)
    zones.zone_getter = getter
    assert asked == ["next"]
    assert events == ()
    assert [v.zone_id for v in moved.visits] == ["next", "sq"]
    assert moved.visits[1] is inside
    assert moved.settled is not None
    assert moved.settled.until_ns == T0 + 31 * S  # "next" settles in 30 s
    settled, events = tracker.on_location(moved, fix(960, 100, 31), zones)
    assert [(e.type, e.zone_id) for e in events] == [(ENTER, "next")]
    _, events = tracker.on_location(settled, fix(960, 100, 60), zones)
    assert [(e.type, e.zone_id) for e in events] == [(DWELL, "sq")]


def test_the_memo_is_not_used_against_another_index() -> None:
    # The same zones, rebuilt: a zone change builds a new index, and the next fix is
    # judged by it in full (here with the new dwell).
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, fix(500, 500, 0), SQUARE)
    changed = SQUARE.with_zone(square_zone(dwell_s=10, version=2))
    state, events = tracker.on_location(state, fix(500, 500, 20), changed)
    assert [(e.type, e.zone_version) for e in events] == [(DWELL, 2)]


def test_the_fast_constructors_set_every_field_as_the_dataclasses_do() -> None:
    # The tracker builds its states, visits and zone events through the slots' setters; a
    # field added to one of them and not to its builder fails here (equality reads them all).
    location = fix(0, 0, 0)
    built = events_module._new_event(ENTER, "d1", T0, "z", 3, location)
    assert built == Event(ENTER, "d1", T0, "z", 3, location)
    assert hash(built) == hash(Event(ENTER, "d1", T0, "z", 3, location))
    visit = events_module._new_visit("z", True, T0, 2, True, T0 + 1)
    assert visit == Visit("z", True, T0, 2, True, T0 + 1)
    memo = events_module.Settled(0, {}, 0.0, b"k")
    assert events_module._settled(0, {}, 0.0, b"k") == memo
    assert len(fields(events_module.Settled)) == 4
    state = events_module._online_state(T0, T0 + 1, Status.BUSY, (visit,), memo)
    assert state == TrackerState(T0, T0 + 1, True, Status.BUSY, (visit,))
    assert len(fields(Event)) == 9
    assert visit.text is None  # not written yet
    assert len(fields(Visit)) == 7
    assert len(fields(TrackerState)) == 6


_PLACES = [(-100.0, 500.0), (-10.0, 500.0), (10.0, 500.0), (500.0, 500.0), (990.0, 500.0),
           (1010.0, 500.0), (1500.0, 500.0), (2100.0, 2100.0)]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(_PLACES) - 1), st.integers(1, 40), st.integers(0, 9)),
        min_size=1,
        max_size=60,
    )
)
def test_the_memo_never_changes_what_a_route_gives(steps: list[tuple[int, int, int]]) -> None:
    # Every route over places inside, in the band either side, outside and in no zone, with
    # gaps around the settle and dwell times and zone changes mid-route: the same states and
    # events with the memo as without it (a state read back from JSON has none).
    layouts = [
        ZoneIndex([square_zone(dwell_s=45), square_zone("c", west=1000, side=200, dwell_s=0)]),
        ZoneIndex([square_zone(dwell_s=20, version=2)]),
        ZoneIndex([square_zone(side=1005, version=3), square_zone("c", west=2000, version=2)]),
    ]
    tracker = ZoneTracker()
    memo = plain = NEW_DRIVER
    t_s = 0
    index = layouts[0]
    for place, gap_s, change in steps:
        t_s += gap_s
        if change == 0:
            index = layouts[(layouts.index(index) + 1) % len(layouts)]
        location = fix(*_PLACES[place], t_s)
        memo, with_memo = tracker.on_location(memo, location, index)
        plain, without = tracker.on_location(TrackerState._parse(plain.to_json()), location, index)
        assert with_memo == without
        assert memo == plain


#: Zones whose maps a route below makes up: a dwell each (none, short, long), so that visits
#: of several zones, entered at different times, are kept beside the one judged.
_MANY = ZoneIndex(
    Zone(z, z, (), Circle(52.5, 13.4, 100.0), dwell_ns=d * S)
    for z, d in zip("abcdef", (0, 20, 45, 0, 90, 5), strict=True)
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(
                st.sampled_from("abcdef"), st.none() | st.sampled_from(list(Where)), max_size=3
            ),
            st.integers(1, 40),
            st.booleans(),  # another key for the same map (a zone of two boxes)
        ),
        min_size=1,
        max_size=60,
    )
)
def test_judging_only_the_zones_that_moved_gives_what_the_full_loop_gives(
    steps: list[tuple[dict[str, Where | None], int, bool]],
) -> None:
    # A driver near several zones at once, one or a few of them changing level at a time
    # (into or out of their band, a visit added or dropped among the others): the memo's
    # path gives the states and events of the full loop, keys or no keys.
    tracker = ZoneTracker()
    memo = plain = NEW_DRIVER
    where: dict[str, Where] = {}
    t_s = 0
    for n, (changes, gap_s, other_key) in enumerate(steps):
        t_s += gap_s
        for zone_id, level in changes.items():
            if level is None:
                where.pop(zone_id, None)
            else:
                where[zone_id] = level
        key = repr(sorted(where.items())).encode() + (str(n).encode() if other_key else b"")
        location = fix(0, 0, t_s)
        memo, with_memo = tracker.on_location(memo, location, _MANY, dict(where), key)
        before = TrackerState._parse(plain.to_json())
        plain, without = tracker.on_location(before, location, _MANY, dict(where))
        assert with_memo == without
        assert memo == plain
        assert [v.zone_id for v in memo.visits] == sorted(v.zone_id for v in memo.visits)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ([], set(EventType)),
        (["zone.*"], {ENTER, EXIT, DWELL}),
        (["driver.online", "zone.exit"], {ONLINE, EXIT}),
        (["*"], set(EventType)),
    ],
)
def test_type_filters(patterns: list[str], expected: set[EventType]) -> None:
    assert parse_type_filter(patterns) == expected


def test_a_type_filter_matching_nothing_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"zone\.entr"):
        parse_type_filter(["zone.entr"])


def _reference_body(event: Event) -> str:
    """event_body as json.dumps writes it: what the log has always stored."""
    doc: dict[str, object] = {}
    if event.location is not None:
        loc = event.location
        doc["loc"] = [loc.latitude, loc.longitude, loc.speed_mps, loc.heading_degrees]
    if event.old_status is not None:
        doc["old"] = event.old_status.value
    if event.new_status is not None:
        doc["new"] = event.new_status.value
    if event.zone_deleted:
        doc["deleted"] = True
    if event.zone_version:
        doc["zv"] = event.zone_version
    return json.dumps(doc, separators=(",", ":"))


def every_kind_of_event(here: Location, other: Location) -> list[Event]:
    """One event of each type and shape, at `here`'s time and, for one dwell, at `other`."""
    return [
        Event(EventType.ZONE_ENTER, "d", 5, "z1", 3, here),
        Event(EventType.ZONE_EXIT, "d", 5, "z2", 1, here, zone_deleted=True),
        Event(EventType.ZONE_DWELL, "d", 5, "z3", 0, here),
        Event(EventType.DRIVER_ONLINE, "d", 5, location=here, new_status=Status.AVAILABLE),
        Event(EventType.DRIVER_OFFLINE, "d", 5),
        Event(EventType.ZONE_ENTER, "d", 6, "z1", 12, other),
        Event(
            EventType.DRIVER_STATUS_CHANGED,
            "d",
            7,
            old_status=Status.AVAILABLE,
            new_status=Status.BUSY,
        ),
    ]


def test_event_bodies_are_the_json_the_log_always_stored() -> None:
    here = Location("d", 52.123456789, 13.0, 8.25, 91.0, 5)
    odd = Location("d", -0.1, 1e-7, math.nan, 0.0, 6)  # a NaN speed: json.dumps's own path
    events = every_kind_of_event(here, odd)
    bodies = event_bodies(events)
    assert bodies == [_reference_body(e) for e in events] == [event_body(e) for e in events]
    for i, (event, body) in enumerate(zip(events, bodies, strict=True)):
        if event.location is not None and math.isnan(event.location.speed_mps):
            continue  # NaN != NaN
        logged = event_from_row(i, event.type.value, "d", event.zone_id, event.at_ns, 0, body)
        assert logged.event == event


def test_logged_events_are_what_the_log_reads_back() -> None:
    """What a store hands over after a commit equals `event_from_row` of the stored rows,
    also for a location that is not the driver's fix at the event's time (read back as one)."""
    here = Location("d", 52.123456789, 13.0, 8.25, 91.0, 5)
    earlier = Location("d", 52.0, 13.5, 1.0, 2.0, 4)  # the enter at 6 carries a fix of 4
    events = every_kind_of_event(here, earlier)
    handed = logged_events(range(41, 48), 99, events)
    read = [
        event_from_row(41 + i, e.type.value, e.driver_id, e.zone_id, e.at_ns, 99, body)
        for i, (e, body) in enumerate(zip(events, event_bodies(events), strict=True))
    ]
    assert handed == read
    assert handed[5].event.location == Location("d", 52.0, 13.5, 1.0, 2.0, 6)
    assert handed[0].event is events[0]  # nothing made anew when it already reads back equal
