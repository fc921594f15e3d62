"""The tracker's and evaluator's shortcuts give what their general paths give: the state's
JSON written directly, a driver's first visits, the evaluator with no zones, and a state
read back from a text this process knows."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service.app.evaluation import ZoneEvaluator
from driver_service.domain import Location, Status
from driver_service.domain import events as events_module
from driver_service.domain import zones as zones_module
from driver_service.domain.events import (
    NEW_DRIVER,
    Event,
    TrackerState,
    Visit,
    ZoneTracker,
    sweep_stale,
    with_times,
)
from driver_service.domain.zones import Circle, PolygonShape, Where, Zone, ZoneIndex

S = 10**9
T0 = 1_800_000_000 * S

_ids = st.sampled_from(["a", "z-1", "b.c:d@e", 'q"uote', "back\\slash", "ünï", "\n"])
_times = st.none() | st.integers(-(2**63), 2**63 - 1)
_visits = st.builds(
    Visit,
    _ids,
    st.booleans(),
    st.integers(0, 2**62),
    st.integers(0, 2**31),
    st.booleans(),
    st.none() | st.integers(0, 2**62),
)
_states = st.builds(
    TrackerState,
    _times,
    _times,
    st.booleans(),
    st.none() | st.sampled_from(list(Status)),
    st.lists(_visits, max_size=4).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(_states)
def test_the_state_text_is_what_json_dumps_writes(state: TrackerState) -> None:
    reference = json.dumps(events_module._state_doc(state), separators=(",", ":"))
    assert state.to_json() == reference
    assert state.to_json() == reference  # the visits' texts kept from the first
    again = TrackerState(0, 1, True, None, state.visits[::-1])  # another state, same visits
    assert again.to_json() == json.dumps(events_module._state_doc(again), separators=(",", ":"))
    assert TrackerState._parse(reference) == state


def _zone(zone_id: str, dwell_s: int, version: int) -> Zone:
    shape = Circle(52.5, 13.4, 100.0)
    return Zone(zone_id, zone_id, (), shape, dwell_ns=dwell_s * S, version=version)


_ZONE_IDS = ["a", "b", "c", "d", "e"]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*_ZONE_IDS, "gone"]), st.sampled_from(list(Where))),
    st.lists(st.sampled_from([0, 10, 60]), min_size=5, max_size=5),
    st.sampled_from([0, 30 * S]),
)
def test_a_drivers_first_visits_are_what_the_general_loop_makes(
    where: dict[str, Where], dwells: list[int], settle_ns: int
) -> None:
    # The general loop runs when the driver has a visit: one of a deleted zone it never
    # entered changes nothing (dropped silently), so both must agree on everything else.
    index = ZoneIndex(
        _zone(z, d, i + 1) for i, (z, d) in enumerate(zip(_ZONE_IDS, dwells, strict=True))
    )
    tracker = ZoneTracker(settle_ns=settle_ns)
    location = Location("d1", 52.5, 13.4, 1.0, 2.0, T0)
    ghost = Visit("deleted", False, T0 - S, 1)
    first = tracker._visit_zones((), location, index, where)
    general = tracker._visit_zones((ghost,), location, index, where)
    assert first == general


def _fix(driver: str, t_s: int) -> Location:
    return Location(driver, 52.5, 13.4, 1.0, 2.0, T0 + t_s * S)


def test_with_no_zones_the_evaluator_judges_every_fix_as_the_tracker() -> None:
    # New drivers, newer fixes, a fix not newer than the last, a driver gone offline and
    # back, and one with a visit of a zone deleted since (it must exit).
    evaluator = ZoneEvaluator()
    tracker = ZoneTracker()
    index = ZoneIndex()
    inside = Visit("gone", True, T0 - 10 * S, 2)
    start = TrackerState(T0 - S, T0 - S, True, Status.BUSY, (inside,))
    states: dict[str, TrackerState] = {"d3": start}
    expected = dict(states)
    groups = [
        [_fix("d1", 1), _fix("d2", 1), _fix("d1", 2), _fix("d3", 1)],
        [_fix("d1", 3), _fix("d2", 1), _fix("d3", 2)],
        [_fix("d1", 500), _fix("d2", 2)],
    ]
    for n, group in enumerate(groups):
        if n == 2:  # d1 and d2 went offline in between
            for driver in ("d1", "d2"):
                swept, event = sweep_stale(states[driver], driver, T0 + 400 * S, 120 * S)
                assert event is not None
                states[driver] = expected[driver] = swept
        new_states, events = evaluator.on_locations(states, group)
        wanted: list[Event] = []
        for location in group:
            state, caused = tracker.on_location(
                expected.get(location.driver_id, NEW_DRIVER), location, index
            )
            expected[location.driver_id] = state
            wanted.extend(caused)
        assert events == wanted
        assert new_states == {d: expected[d] for d in new_states}
        states.update(new_states)
    assert [e.type.value for e in evaluator.on_locations({}, [_fix("d9", 1)])[1]] == [
        "driver.online"
    ]


def test_a_state_read_back_from_its_text_keeps_its_memo() -> None:
    zones = ZoneIndex([_zone("a", 60, 1)])
    tracker = ZoneTracker()
    state, _ = tracker.on_location(NEW_DRIVER, _fix("d1", 0), zones, {"a": Where.INSIDE})
    assert state.settled is not None
    read = TrackerState.from_json(state.to_json())
    moved = with_times(read, T0 + 5, T0 + 6)
    assert moved == replace(read, last_fix_ns=T0 + 5, last_seen_ns=T0 + 6)
    assert moved.settled is state.settled
    assert read == TrackerState._parse(state.to_json())
    assert read.settled is state.settled
    again, events = tracker.on_location(read, _fix("d1", 1), zones, {"a": Where.INSIDE})
    assert events == ()
    assert again.visits is state.visits  # the memo's path: nothing rebuilt


# --- the evaluator with zones: keys instead of maps, the memo checked in its loop -------------

_M_PER_DEG_LAT = 111_195.0
_KX = _M_PER_DEG_LAT * math.cos(math.radians(52.5))


def _east(metres: float) -> tuple[float, float]:
    return 52.5, 13.4 + metres / _KX


def _square(zone_id: str, west_m: float, side_m: float, dwell_s: int, version: int) -> Zone:
    corners = [(west_m, -side_m / 2), (west_m + side_m, -side_m / 2)]
    corners += [(west_m + side_m, side_m / 2), (west_m, side_m / 2)]
    ring = [[13.4 + e / _KX, 52.5 + n / _M_PER_DEG_LAT] for e, n in corners]
    shape = PolygonShape(json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}))
    return Zone(zone_id, zone_id, (), shape, dwell_ns=dwell_s * S, version=version)


def _circle(zone_id: str, radius_m: float, dwell_s: int, version: int) -> Zone:
    shape = Circle(52.5, 13.4, radius_m)
    return Zone(zone_id, zone_id, (), shape, dwell_ns=dwell_s * S, version=version)


#: Zone layouts a route switches between: the same zones rebuilt with a new version (the
#: memo must not outlive its index), another dwell, other shapes.
_LAYOUTS = [
    [_circle("a", 100.0, 45, 1), _square("b", 150.0, 200.0, 0, 1)],
    [_circle("a", 100.0, 45, 2), _square("b", 150.0, 200.0, 0, 2)],
    [_circle("a", 150.0, 20, 3)],
    [],
]
#: Metres east of the circles' centre: inside, either band of the circle (100 m; 150 m in
#: the third layout), between, either band of the square (150 m to 350 m), inside it, far.
_EAST_M = [0.0, 70.0, 90.0, 110.0, 125.0, 140.0, 160.0, 175.0, 250.0, 340.0, 360.0, 900.0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["d1", "d2", "d3"]),
            st.integers(0, len(_EAST_M) - 1),
            st.integers(1, 40),
            st.integers(0, 3),  # 0: the group ends here
            st.integers(0, 11),  # 0: the zones change after this fix's group
        ),
        min_size=1,
        max_size=60,
    )
)
def test_with_zones_the_evaluator_judges_every_fix_as_the_tracker_without_memo(
    steps: list[tuple[str, int, int, int, int]],
) -> None:
    # Drivers moving among places inside, in either band, outside and in no zone, in commit
    # groups of any size, with zone changes between groups: the keyed path gives the states
    # and events the tracker gives each fix from its state's text (no memo) and its map.
    evaluator = ZoneEvaluator()
    tracker = ZoneTracker()
    layout = 0
    evaluator.load_zones(1, {z.zone_id: z.version for z in _LAYOUTS[0]}, _LAYOUTS[0])
    states: dict[str, TrackerState] = {}
    plain: dict[str, TrackerState] = {}
    clock = dict.fromkeys(("d1", "d2", "d3"), 0)
    group: list[Location] = []
    for n, (driver, place, gap_s, ends, change) in enumerate(steps):
        clock[driver] += gap_s
        lat, lon = _east(_EAST_M[place])
        group.append(Location(driver, lat, lon, 1.0, 2.0, T0 + clock[driver] * S))
        if ends and n < len(steps) - 1:
            continue
        index = evaluator.index
        new_states, events = evaluator.on_locations(states, group)
        wanted: list[Event] = []
        for location in group:
            who = location.driver_id
            before = TrackerState._parse(plain[who].to_json()) if who in plain else NEW_DRIVER
            plain[who], caused = tracker.on_location(before, location, index)
            wanted.extend(caused)
        assert events == wanted
        assert new_states == {d: plain[d] for d in new_states}
        states.update(new_states)
        group = []
        if change == 0:
            layout = (layout + 1) % len(_LAYOUTS)
            zones = _LAYOUTS[layout]
            evaluator.load_zones(layout + 2 + n, {z.zone_id: z.version for z in zones}, zones)


def test_a_key_stands_for_one_map() -> None:
    # Points across both zones' bands: the same key, the same map; each map as `locate`.
    index = ZoneIndex(_LAYOUTS[0])
    points = [_east(m / 4) for m in range(-200, 1600)]
    located = index.locate_keyed([p[0] for p in points], [p[1] for p in points])
    by_key: dict[bytes, dict[str, Where]] = {}
    for i, (lat, lon) in enumerate(points):
        where = located.where(i)
        assert where == index.locate(lat, lon)
        assert by_key.setdefault(located.keys[i], where) == where
    assert len(by_key) >= 6  # every level of both zones, and none


def test_a_circles_distances_from_its_stored_terms_are_the_formulas() -> None:
    # The index keeps each circle's latitude in radians and its cosine: the distances must
    # be those of the formula computed pair by pair, to the last bit.
    rng = np.random.default_rng(7)
    for n in (1, 5, 64, 333):
        lat1, lon1 = rng.uniform(-85, 85, 200), rng.uniform(-180, 180, 200)
        lat2, lon2 = rng.uniform(-85, 85, 64), rng.uniform(-180, 180, 64)
        b, p = rng.integers(0, 200, n), rng.integers(0, 64, n)
        reference = zones_module._haversine_np(lat1[b], lon1[b], lat2[p], lon2[p])
        c1, c2 = np.radians(lat1), np.radians(lat2)
        got = zones_module._haversine_pairs(
            c1[b], np.cos(c1)[b], lon1[b], c2[p], np.cos(c2)[p], lon2[p]
        )
        assert np.array_equal(got, reference)
