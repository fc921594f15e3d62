"""The tracker's and evaluator's shortcuts give what their general paths give: the state's
JSON written directly, a driver's first visits, the evaluator with no zones, and a state
read back from a text this process knows."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service.app.evaluation import ZoneEvaluator
from driver_service.domain import Location, Status
from driver_service.domain import events as events_module
from driver_service.domain.events import (
    NEW_DRIVER,
    Event,
    TrackerState,
    Visit,
    ZoneTracker,
    sweep_stale,
    with_times,
)
from driver_service.domain.zones import Circle, Where, Zone, ZoneIndex

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
