"""Driver events and the per-driver state machine that derives them from accepted updates.

`ZoneTracker.on_location` is given a driver's `TrackerState` and a location that advanced
the driver's current location, and returns the new state and the events to log with that
update. It is pure: the same state, location and zones give the same events on any replica,
so the state is small, serialisable (`TrackerState.to_json`) and stored with the driver.

Rules (docs/events.md will carry them to users):

- Ordering. A fix at or before the last evaluated fix time changes nothing and emits nothing
  (the caller already drops out-of-order fixes and duplicates; this is the second line).
  Within one update events come as: driver.online, zone.exit, zone.enter, zone.dwell, each
  group by zone id, so a move between adjacent zones reads exit-then-enter.
- Hysteresis (no flapping on an edge). Every zone has a band of `zones.MARGIN_M` (20 m)
  either side of its edge. A driver enters when a fix is inside by more than the margin, or
  when consecutive fixes have stayed inside the zone (in the band) for `settle_ns` (30 s
  by default; this is how a driver parked just inside an edge, or in a zone thinner than
  twice the margin, gets in). It exits when a fix is outside by more than the margin, or when
  consecutive fixes have stayed outside (in the band) for `settle_ns`. A fix on the other
  side restarts the count, so jitter across an edge changes nothing.
- Dwell. One zone.dwell per visit, on the first update at least the zone's dwell time after
  the zone.enter (updates drive evaluation: a driver who stops sending gets its dwell on its
  next update, if still inside). A zone's dwell of 0 means none.
- Zone changes. The zones in effect are those of the `ZoneIndex` passed in: a created,
  replaced or deleted zone counts from the next update. A replaced zone keeps its visits and
  is judged by its new shape with the same hysteresis. A deleted zone that a driver was
  inside gets a zone.exit with `zone_deleted` on that driver's next update (so consumers
  that count occupancy never leak); a visit not yet entered is dropped silently.
- Online/offline. The first update of a driver, or the first after driver.offline, emits
  driver.online. `sweep_stale` (run periodically for every online driver) emits
  driver.offline once no update was seen for more than `stale_after`, timed at the moment the
  driver became stale (last seen + stale_after), not at the sweep, so every replica agrees.
  Visits survive going offline: a driver back inside its zone gets no new zone.enter.
- Status. `on_status` emits driver.status_changed (old, new) when the status differs from the
  last one known; a driver's first known status is carried by its driver.online instead.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from driver_service.domain.errors import InvalidInput
from driver_service.domain.fields import fields_of
from driver_service.domain.model import INITIAL_STATUS, Location, Status, new_location
from driver_service.domain.zones import Located, Where, Zone, ZoneIndex

NANOS = 10**9
#: How long a driver must stay in a zone's edge band (inside, or outside) for that to count
#: as entering (or leaving) when no fix went beyond the margin.
DEFAULT_SETTLE_NS = 30 * NANOS


class EventType(enum.StrEnum):
    """Event types as the log and WatchEvents spell them."""

    ZONE_ENTER = "zone.enter"
    ZONE_EXIT = "zone.exit"
    ZONE_DWELL = "zone.dwell"
    DRIVER_ONLINE = "driver.online"
    DRIVER_OFFLINE = "driver.offline"
    DRIVER_STATUS_CHANGED = "driver.status_changed"


@dataclass(frozen=True, slots=True)
class Event:
    """An event before it is logged: the log adds its id and recorded time.

    `at_ns` is the fix time of the update that caused it (status: when the change was
    accepted; offline: when the driver became stale). `location` is the fix for zone.* and
    for a driver.online caused by a location.
    """

    type: EventType
    driver_id: str
    at_ns: int
    zone_id: str = ""
    zone_version: int = 0
    location: Location | None = None
    old_status: Status | None = None
    new_status: Status | None = None
    zone_deleted: bool = False


def parse_type_filter(patterns: Iterable[str]) -> frozenset[EventType]:
    """The event types a WatchEvents `types` filter selects: exact names or globs
    (``zone.*``); no pattern means every type. A pattern matching no type is refused, so a
    typo does not silently watch nothing."""
    selected: set[EventType] = set()
    given = False
    for pattern in patterns:
        given = True
        matched = {t for t in EventType if fnmatch.fnmatchcase(t.value, pattern)}
        if not matched:
            known = ", ".join(t.value for t in EventType)
            raise InvalidInput(f"event type {pattern!r} matches none of {known}")
        selected |= matched
    return frozenset(selected) if given else frozenset(EventType)


@dataclass(frozen=True, slots=True)
class Visit:
    """A driver's relation to one zone it is in or near.

    entered False: inside the zone's band since `since_ns`, not entered yet (settling).
    entered True: entered at `since_ns`; `outside_since_ns` is the first fix of the current
    run of fixes outside the zone (in the band), None while inside.
    """

    zone_id: str
    entered: bool
    since_ns: int
    zone_version: int = 0
    dwelled: bool = False
    outside_since_ns: int | None = None
    #: The visit as its state's JSON holds it, once a state holding it was written
    #: (`TrackerState.to_json`): a visit is kept, the same object, by most of its driver's
    #: next states, so its numbers are formatted once. Not an argument, not compared.
    text: str | None = field(default=None, init=False, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Settled:
    """Why a driver's next fixes may change nothing but its times: its visits are what the
    tracker made of `where` against the index `index_token`, and no timer of theirs (settle,
    dwell) fires before `until_ns`. A fix at the same `where`, against the same index and
    before `until_ns`, then leaves every visit as it is and causes no event (see
    `ZoneTracker.on_location`), so the tracker skips its per-zone loop; a fix at another
    `where` before `until_ns` is judged only for the zones whose level moved (`until_ns`
    stays the visits' earliest timer). `key` is `where`'s key (`zones.Located`) when the
    caller had one: comparing it is cheaper than comparing maps, and spares building the
    next fix's map."""

    index_token: int
    where: Mapping[str, Where]
    until_ns: float
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class TrackerState:
    """What the tracker remembers of one driver between updates; stored with the driver.

    `settled` is a memo kept in memory only (not stored, not compared): a state read back
    from its JSON has none, and its next fix takes the full path."""

    last_fix_ns: int | None = None
    last_seen_ns: int | None = None
    online: bool = False
    status: Status | None = None
    visits: tuple[Visit, ...] = ()
    settled: Settled | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> str:
        """Compact JSON (version 1), stable key order: the form stored beside the driver.
        Written directly (the same text as json.dumps gives, see `_state_doc`): a fleet
        crossing zones writes one on every update."""
        # The fix time's digits are formatted once: the last-seen time, and the start of
        # every visit made by this fix (a first fix's), are mostly the same number.
        fix, seen = self.last_fix_ns, self.last_seen_ns
        if fix is None:
            fix_text = "null"
        elif type(fix) is int:
            fix_text = str(fix)
        else:
            return _COMPACT.encode(_state_doc(self))
        if seen is None:
            seen_text = "null"
        elif type(seen) is int:
            seen_text = fix_text if seen == fix else str(seen)
        else:
            return _COMPACT.encode(_state_doc(self))
        parts = [_STATE_HEAD, fix_text, ',"seen":', seen_text, ","]
        parts.append('"online":true,"status":' if self.online else '"online":false,"status":')
        status = self.status
        parts.append("null" if status is None else _quoted(status.value))
        parts.append(',"visits":[')
        visits: list[str] = []
        for v in self.visits:
            known = v.text
            if known is not None:
                visits.append(known)
                continue
            since, version, outside = v.since_ns, v.zone_version, v.outside_since_ns
            if (
                type(since) is not int
                or type(version) is not int
                or not (outside is None or type(outside) is int)
            ):
                return _COMPACT.encode(_state_doc(self))
            since_text = fix_text if since == fix else str(since)
            known = (
                f"[{_quoted(v.zone_id)},{_BOOL[v.entered]},{since_text},"
                f"{version},{_BOOL[v.dwelled]},{'null' if outside is None else outside}]"
            )
            _SET_VISIT_TEXT(v, known)
            visits.append(known)
        parts.append(",".join(visits))
        parts.append("]}")
        text = "".join(parts)
        _remember(text, self)
        return text

    @classmethod
    def from_json(cls, text: str) -> TrackerState:
        """The state a `to_json` text holds. A text this process wrote or read before is
        not parsed again: the state is taken from `_BY_TEXT` (states are immutable), with
        its memo, so a PostgreSQL replica, which reads each driver's state from its row in
        every transaction, keeps the tracker's fast path (the same visits give the same
        memo, whoever wrote them)."""
        known = _BY_TEXT.get(text)
        if known is not None:
            return known
        state = cls._parse(text)
        _remember(text, state)
        return state

    @classmethod
    def _parse(cls, text: str) -> TrackerState:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("not a version 1 tracker state")
        status = doc["status"]
        return cls(
            last_fix_ns=doc["fix"],
            last_seen_ns=doc["seen"],
            online=bool(doc["online"]),
            status=None if status is None else Status(status),
            visits=tuple(
                Visit(zone_id, bool(entered), since, version, bool(dwelled), outside)
                for zone_id, entered, since, version, dwelled, outside in doc["visits"]
            ),
        )


NEW_DRIVER = TrackerState()

#: States by the JSON text they were written as or read from (see `from_json`); emptied
#: when it reaches _BY_TEXT_LIMIT, so it holds at most that many.
_BY_TEXT: dict[str, TrackerState] = {}
_BY_TEXT_LIMIT = 100_000


def _remember(text: str, state: TrackerState) -> None:
    if len(_BY_TEXT) >= _BY_TEXT_LIMIT:
        _BY_TEXT.clear()
    _BY_TEXT[text] = state


#: The state text's fixed start: its format version, then the fix time's key.
_STATE_HEAD = '{"v":1,"fix":'
#: JSON's spelling of a boolean, by the value (an int 0/1 where a bool was meant alike).
_BOOL = {False: "false", True: "true"}
#: A str as JSON writes it (ASCII, escaped): json's own C function.
_quoted: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _state_doc(state: TrackerState) -> dict[str, Any]:
    """The state as the document its JSON holds: `to_json`'s reference form, used for a
    value of an unexpected type (json.dumps then decides)."""
    return {
        "v": 1,
        "fix": state.last_fix_ns,
        "seen": state.last_seen_ns,
        "online": state.online,
        "status": None if state.status is None else state.status.value,
        "visits": [
            [v.zone_id, v.entered, v.since_ns, v.zone_version, v.dwelled, v.outside_since_ns]
            for v in state.visits
        ],
    }


def stored_alike(before: TrackerState | None, after: TrackerState) -> bool:
    """Whether `after` differs from `before` in its fix and last-seen times at most: a store
    that keeps those times in the driver's own row (the newest fix's time and last seen are
    the same numbers) need not write the state again."""
    if before is None:
        return False
    visits = before.visits
    return (
        # The same tuple, most often (the tracker keeps it): no element compared.
        (visits is after.visits or visits == after.visits)
        and before.online == after.online
        and before.status == after.status
    )


def times_only(state: TrackerState) -> bool:
    """Whether, with no zone, every fix newer than the state's fix changes no more of it
    than its fix and last-seen times, and logs nothing: the driver is online with a known
    status and no visit (`ZoneTracker.on_locations_nowhere`'s loop, which moves such a
    state without a call). A store that keeps those times in the driver's row (see
    stored_alike) need not evaluate such a driver's fixes at all."""
    return state.online and not state.visits and state.status is not None


def with_times(state: TrackerState, fix_ns: int | None, seen_ns: int | None) -> TrackerState:
    """`state` with the fix and last-seen times its driver's row holds (see stored_alike),
    its memo kept; made as its fields (see _state), as `dataclasses.replace`
    costs ~20x a dict lookup: PostgreSQL does this for every driver in every commit."""
    return _state(fix_ns, seen_ns, state.online, state.status, state.visits, state.settled)


@dataclass(frozen=True, slots=True)
class ZoneTracker:
    """Derives a driver's events from its updates (see the module docstring for the rules)."""

    settle_ns: int = DEFAULT_SETTLE_NS

    def on_location(
        self,
        state: TrackerState,
        location: Location,
        zones: ZoneIndex,
        where: Mapping[str, Where] | None = None,
        key: bytes | None = None,
    ) -> tuple[TrackerState, tuple[Event, ...]]:
        """The state after `location` and the events it causes. `where` is
        ``zones.locate(lat, lon)`` when the caller computed it already (``locate_keyed`` over
        a commit group, then `key` is its key); otherwise it is computed here."""
        t = location.recorded_at_ns
        last_fix = state.last_fix_ns
        if last_fix is not None and t <= last_fix:
            return state, ()
        if where is None:
            where = zones.locate(location.latitude, location.longitude)
        status = state.status or INITIAL_STATUS
        seen = state.last_seen_ns
        new_seen = t if seen is None or t > seen else seen
        settled = state.settled
        token = zones.token
        if (
            settled is not None
            and t < settled.until_ns
            and state.online
            and settled.index_token == token
        ):
            was = settled.where
            # Another key than the memo's stands for another map (one that stood for the
            # same would only be judged below, to the same end): no maps compared.
            if (key is None or key == settled.key) and was == where:
                # The same place relative to every zone as at the fix that made these
                # visits, and no timer due: the per-zone loop would return every visit
                # unchanged.
                return _state(t, new_seen, True, status, state.visits, settled), ()
            # No timer due either, but the fix moved relative to some zones: only those
            # are judged (every other zone's visit would come back unchanged).
            visits, until, caused = self._visit_moved(
                state.visits, location, zones, where, was, settled.until_ns
            )
        else:
            judged, until, caused = self._visit_zones(state.visits, location, zones, where)
            visits = tuple(judged)
        new_state = _state(t, new_seen, True, status, visits, _settled(token, where, until, key))
        if state.online:
            if not caused:
                return new_state, ()
            if len(caused) == 1:
                return new_state, (caused[0][1],)
            events: list[Event] = []
        else:
            events = [_new_event(_ONLINE, location.driver_id, t, "", 0, location, status)]
        if caused:
            caused.sort(key=_by_rank)  # stable: each group stays in zone id order
            for _, event in caused:
                events.append(event)
        return new_state, tuple(events)

    def on_locations_nowhere(
        self,
        states: Mapping[str, TrackerState],
        advanced: Iterable[Location],
        zones: ZoneIndex,
    ) -> tuple[dict[str, TrackerState], list[Event]]:
        """Each driver's state after `advanced` (in order) and their events, when `zones`
        holds no zone. A fix that can change only the fix and last-seen times (the driver
        online with a known status and no visit, the fix newer than the last: with no zones,
        every fix but a driver's first and its first after going offline) moves them in
        this loop, without a call per fix; the rest take `on_location`."""
        new_states: dict[str, TrackerState] = {}
        events: list[Event] = []
        for loc in advanced:
            driver_id = loc.driver_id
            state = new_states.get(driver_id) or states.get(driver_id) or NEW_DRIVER
            t = loc.recorded_at_ns
            last = state.last_fix_ns
            status = state.status
            if (
                state.online
                and not state.visits
                and status is not None
                and last is not None
                and t > last
            ):
                seen = state.last_seen_ns
                new_states[driver_id] = _online_state(
                    t, t if seen is None or t > seen else seen, status, (), state.settled
                )
                continue
            state, caused = self.on_location(state, loc, zones, _NOWHERE)
            new_states[driver_id] = state
            events.extend(caused)
        return new_states, events

    def on_locations_located(
        self,
        states: Mapping[str, TrackerState],
        advanced: Iterable[Location],
        zones: ZoneIndex,
        located: Located,
    ) -> tuple[dict[str, TrackerState], list[Event]]:
        """Each driver's state after `advanced` (in order) and their events, the i-th fix
        being where ``located`` (``zones.locate_keyed`` of the fixes) says. A fix that
        `on_location` would take through its memo (the same key as the memo's, against the
        same index, online, newer than the last fix and before the memo's timer) moves the
        times in this loop, without building its map or calling per fix; the rest take
        `on_location` with their map and key."""
        new_states: dict[str, TrackerState] = {}
        events: list[Event] = []
        token = zones.token
        keys = located.keys
        newer, known = new_states.get, states.get
        for i, loc in enumerate(advanced):
            driver_id, t = loc.driver_id, loc.recorded_at_ns
            state = newer(driver_id) or known(driver_id) or NEW_DRIVER
            settled, last = state.settled, state.last_fix_ns
            if (
                settled is not None
                and settled.index_token == token
                and t < settled.until_ns
                and state.online
                and last is not None
                and t > last
                and settled.key == keys[i]
            ):
                # `_state(...)` written out: most fixes of a fleet take this line, and a call
                # costs as much as the rest of it.
                seen = state.last_seen_ns
                made = _TRACKER_STATE_FIELDS()
                made.last_fix_ns = t
                made.last_seen_ns = t if seen is None or t > seen else seen
                made.online = True
                made.status = state.status or INITIAL_STATUS
                made.visits = state.visits
                made.settled = settled
                made.__class__ = TrackerState
                new_states[driver_id] = made
                continue
            where = located.where(i)
            state, caused = self.on_location(state, loc, zones, where, keys[i])
            new_states[driver_id] = state
            events.extend(caused)
        return new_states, events

    def _visit_zones(
        self,
        before: tuple[Visit, ...],
        location: Location,
        zones: ZoneIndex,
        where: Mapping[str, Where],
    ) -> tuple[list[Visit], float, list[tuple[int, Event]]]:
        """Every zone's visit after `location` (sorted by zone id), the first fix time at
        which a kept visit's timer (settle, dwell) may fire, and the zone events as
        (rank, event): exits, then enters, then dwells, each in zone id order."""
        if not before:
            return self._first_visits(location, zones.zone_getter, where)
        previous = {v.zone_id: v for v in before}
        return self._judge(sorted(previous.keys() | where.keys()), previous, location, zones, where)

    def _visit_moved(
        self,
        before: tuple[Visit, ...],
        location: Location,
        zones: ZoneIndex,
        where: Mapping[str, Where],
        was: Mapping[str, Where],
        until: float,
    ) -> tuple[tuple[Visit, ...], float, list[tuple[int, Event]]]:
        """`_visit_zones` for a fix whose driver's memo (`Settled`) still holds but for its
        map, `was` (`until` being its timer): only the zones whose level is not the one in
        `was` are judged. Every other zone's visit is what judging it at that level made,
        and judging it again at that level before its own timer returns it unchanged with
        no event (each case of `_advance` and `_settle`), so it is kept as it is. The timer
        stays the earliest of the visits' (`_next_timer`): recomputed over the kept visits
        only when a judged zone's visit was the one that set it. `before` is in zone id
        order, as the tracker makes every state's visits (a memo comes only with those)."""
        get = was.get
        moved: list[str] = []
        # `is not`: a level another caller spelled otherwise is judged, which is never wrong.
        # Loops, not comprehensions: on Python 3.11 each of those is a function made and
        # called.
        for zone_id, here in where.items():
            if get(zone_id) is not here:
                moved.append(zone_id)
        for zone_id in was:
            if zone_id not in where:
                moved.append(zone_id)  # noqa: PERF401 (see above)
        if len(moved) == 1:
            return self._visit_one_moved(before, location, zones, where, moved[0], until)
        moved.sort()
        previous: dict[str, Visit] = {}
        kept: list[Visit] = []
        for visit in before:
            if visit.zone_id in moved:
                previous[visit.zone_id] = visit
            else:
                kept.append(visit)
        zone_of = zones.zone_getter
        settle_ns = self.settle_ns
        for zone_id, visit in previous.items():
            zone = zone_of(zone_id)
            if zone is None or _next_timer(visit, zone.dwell_ns, settle_ns) <= until:
                until = _earliest_timer(kept, zone_of, settle_ns, until)
                break
        judged, timer, caused = self._judge(moved, previous, location, zones, where)
        if judged and kept:
            kept += judged
            kept.sort(key=_zone_id_of)  # as the full loop orders them
        elif judged:
            kept = judged
        return tuple(kept), timer if timer < until else until, caused

    def _visit_one_moved(
        self,
        before: tuple[Visit, ...],
        location: Location,
        zones: ZoneIndex,
        where: Mapping[str, Where],
        zone_id: str,
        until: float,
    ) -> tuple[tuple[Visit, ...], float, list[tuple[int, Event]]]:
        """`_visit_moved` when one zone's level moved (most such fixes: a driver crossing
        one band): its visit is judged, and put in the place of the one it replaces, or
        where its zone id goes, in the visits kept as they were (no sorting, no copies of
        the others; `before` itself when nothing changed)."""
        at = 0
        old: Visit | None = None
        for visit in before:
            other = visit.zone_id
            if other == zone_id:
                old = visit
                break
            if other > zone_id:
                break
            at += 1
        if old is None:
            judged, timer, caused = self._judge((zone_id,), _NO_VISITS, location, zones, where)
            if not judged:
                return before, until, caused
            visits = (*before[:at], judged[0], *before[at:])
            return visits, timer if timer < until else until, caused
        zone_of = zones.zone_getter
        settle_ns = self.settle_ns
        zone = zone_of(zone_id)
        if zone is None or _next_timer(old, zone.dwell_ns, settle_ns) <= until:
            rest = before[:at] + before[at + 1 :]
            until = _earliest_timer(rest, zone_of, settle_ns, until)
        judged, timer, caused = self._judge((zone_id,), {zone_id: old}, location, zones, where)
        if not judged:
            return before[:at] + before[at + 1 :], until, caused
        new = judged[0]
        visits = before if new is old else (*before[:at], new, *before[at + 1 :])
        return visits, timer if timer < until else until, caused

    def _judge(
        self,
        zone_ids: Iterable[str],
        previous: Mapping[str, Visit],
        location: Location,
        zones: ZoneIndex,
        where: Mapping[str, Where],
    ) -> tuple[list[Visit], float, list[tuple[int, Event]]]:
        """Each zone's visit after `location` (in the order of `zone_ids`, its visit before
        being ``previous.get(zone_id)``), the first fix time at which one of them may
        change at the same place, and the zone events as (rank, event)."""
        t = location.recorded_at_ns
        driver_id = location.driver_id
        caused: list[tuple[int, Event]] = []
        visits: list[Visit] = []
        until: float = math.inf
        settle_ns = self.settle_ns
        zone_of = zones.zone_getter
        for zone_id in zone_ids:
            visit = previous.get(zone_id)
            zone = zone_of(zone_id)
            if zone is None:  # deleted since the last update
                if visit is not None and visit.entered:
                    exit_ = Event(
                        _EXIT,
                        driver_id,
                        t,
                        zone_id,
                        visit.zone_version,
                        location,
                        zone_deleted=True,
                    )
                    caused.append((0, exit_))
                continue
            here = where.get(zone_id, _OUTSIDE)
            dwell_ns = zone.dwell_ns
            if (
                visit is not None
                and here >= _INSIDE_BAND
                and visit.entered
                and visit.outside_since_ns is None
                and visit.zone_version == zone.version
                and (visit.dwelled or dwell_ns <= 0 or t < visit.since_ns + dwell_ns)
            ):
                # Inside a zone already entered, as most fixes are, and no dwell due.
                visits.append(visit)
                if not visit.dwelled and dwell_ns > 0 and visit.since_ns + dwell_ns < until:
                    until = visit.since_ns + dwell_ns
                continue
            visit, kinds = self._advance(visit, zone, here, t)
            if visit is not None:
                visits.append(visit)
                timer = _next_timer(visit, dwell_ns, settle_ns)
                if timer < until:  # noqa: PLR1730 (a call to min() costs several times more)
                    until = timer
            for kind in kinds:
                event = _new_event(kind, driver_id, t, zone_id, zone.version, location)
                caused.append((_RANK[kind], event))
        return visits, until, caused

    def _first_visits(
        self,
        location: Location,
        zone_of: Callable[[str], Zone | None],
        where: Mapping[str, Where],
    ) -> tuple[list[Visit], float, list[tuple[int, Event]]]:
        """`_visit_zones` for a driver in no zone's band before (a new driver, or one that
        was outside every zone): `_settle` of a visit that is None for each zone whose band
        holds the fix, with `_next_timer` of what it makes; the events are all enters."""
        t = location.recorded_at_ns
        driver_id = location.driver_id
        settle_ns = self.settle_ns
        caused: list[tuple[int, Event]] = []
        visits: list[Visit] = []
        until: float = math.inf
        for zone_id in sorted(where):
            here = where[zone_id]
            zone = zone_of(zone_id)
            if zone is None or here <= _OUTSIDE_BAND:
                continue
            version = zone.version
            if here is _INSIDE or settle_ns <= 0:
                visits.append(_new_visit(zone_id, True, t, version, False, None))
                dwell_ns = zone.dwell_ns
                if dwell_ns > 0 and t + dwell_ns < until:
                    until = t + dwell_ns
                event = _new_event(_ENTER, driver_id, t, zone_id, version, location)
                caused.append((1, event))
            else:
                visits.append(_new_visit(zone_id, False, t, version, False, None))
                if t + settle_ns < until:  # noqa: PLR1730 (see _visit_zones)
                    until = t + settle_ns
        return visits, until, caused

    def _advance(
        self, visit: Visit | None, zone: Zone, here: Where, t: int
    ) -> tuple[Visit | None, tuple[EventType, ...]]:
        """One zone's visit after a fix at `t` that is `here` relative to it, and the zone
        events of that fix (enter, exit or dwell; enter never with dwell, as 0 s passed)."""
        # Visits are rebuilt only when they change (most fixes of a driver inside a zone change
        # nothing): an unchanged visit is returned as it is, which keeps a commit cheap.
        version = zone.version
        if visit is None or not visit.entered:
            return self._settle(visit, zone, here, t)
        previous_outside = outside_since = visit.outside_since_ns
        if here is _OUTSIDE or (
            here is _OUTSIDE_BAND
            and outside_since is not None
            and t - outside_since >= self.settle_ns
        ):
            return None, _EXITED
        if here is not _OUTSIDE_BAND:
            outside_since = None
        elif outside_since is None:
            outside_since = t
        dwell_ns = zone.dwell_ns
        if not visit.dwelled and dwell_ns > 0 and t - visit.since_ns >= dwell_ns:
            dwelled = _new_visit(visit.zone_id, True, visit.since_ns, version, True, outside_since)
            return dwelled, _DWELLED
        if outside_since == previous_outside and visit.zone_version == version:
            return visit, ()
        kept = _new_visit(
            visit.zone_id, True, visit.since_ns, version, visit.dwelled, outside_since
        )
        return kept, ()

    def _settle(
        self, visit: Visit | None, zone: Zone, here: Where, t: int
    ) -> tuple[Visit | None, tuple[EventType, ...]]:
        """`_advance` for a zone the driver has not entered (yet)."""
        if here <= _OUTSIDE_BAND:
            return None, ()  # left the band before settling: nothing happened
        since = t if visit is None else visit.since_ns
        if here is _INSIDE or t - since >= self.settle_ns:
            return _new_visit(zone.zone_id, True, t, zone.version, False, None), _ENTERED
        if visit is not None and visit.zone_version == zone.version:
            return visit, ()
        return _new_visit(zone.zone_id, False, since, zone.version, False, None), ()

    def on_status(
        self, state: TrackerState, driver_id: str, status: Status, at_ns: int
    ) -> tuple[TrackerState, tuple[Event, ...]]:
        """The state after a status change accepted at `at_ns` (in the store's order) and the
        events it causes: driver.online if the driver was not, then driver.status_changed
        if the status differs from the last known one."""
        events: list[Event] = []
        if not state.online:
            shown = state.status or status
            events.append(Event(EventType.DRIVER_ONLINE, driver_id, at_ns, new_status=shown))
        if state.status is not None and state.status != status:
            events.append(
                Event(
                    EventType.DRIVER_STATUS_CHANGED,
                    driver_id,
                    at_ns,
                    old_status=state.status,
                    new_status=status,
                )
            )
        seen = at_ns if state.last_seen_ns is None else max(at_ns, state.last_seen_ns)
        return replace(state, online=True, status=status, last_seen_ns=seen), tuple(events)


# Enum members as module constants: on Python 3.11 reading one from its class goes through
# EnumType.__getattr__'s hook (~850 instructions), and the tracker reads them per zone.
_OUTSIDE = Where.OUTSIDE
_OUTSIDE_BAND = Where.OUTSIDE_BAND
_INSIDE = Where.INSIDE
#: Where a point is when no zone exists.
_NOWHERE: Mapping[str, Where] = {}
#: A driver's visits when it has none (read only).
_NO_VISITS: Mapping[str, Visit] = {}
_INSIDE_BAND = Where.INSIDE_BAND
_EXIT = EventType.ZONE_EXIT
_ONLINE = EventType.DRIVER_ONLINE
#: Where a zone event comes among one update's zone events.
_RANK = {EventType.ZONE_EXIT: 0, EventType.ZONE_ENTER: 1, EventType.ZONE_DWELL: 2}


_ENTER = EventType.ZONE_ENTER
_ENTERED = (_ENTER,)
_EXITED = (EventType.ZONE_EXIT,)
_DWELLED = (EventType.ZONE_DWELL,)


def _by_rank(item: tuple[int, Event]) -> int:
    return item[0]


_zone_id_of: Callable[[Visit], str] = operator.attrgetter("zone_id")


_TRACKER_STATE_FIELDS = fields_of(TrackerState)
_SETTLED_FIELDS = fields_of(Settled)
_VISIT_FIELDS = fields_of(Visit)
_EVENT_FIELDS = fields_of(Event)
_SET_VISIT_TEXT: Callable[[Visit, str], None] = Visit.__dict__["text"].__set__


def _settled(
    index_token: int,
    where: Mapping[str, Where],
    until_ns: float,
    key: bytes | None = None,
) -> Settled:
    """`Settled(...)`, made as its fields (see domain.fields): one a judged fix."""
    made = _SETTLED_FIELDS()
    made.index_token = index_token
    made.where = where
    made.until_ns = until_ns
    made.key = key
    made.__class__ = Settled
    settled: Settled = made
    return settled


def _new_visit(
    zone_id: str,
    entered: bool,
    since_ns: int,
    zone_version: int,
    dwelled: bool,
    outside_since_ns: int | None,
) -> Visit:
    """`Visit(...)` with every field given, made as its fields (see domain.fields): a fleet
    crossing zones makes one for every zone it enters."""
    made = _VISIT_FIELDS()
    made.zone_id = zone_id
    made.entered = entered
    made.since_ns = since_ns
    made.zone_version = zone_version
    made.dwelled = dwelled
    made.outside_since_ns = outside_since_ns
    made.text = None
    made.__class__ = Visit
    visit: Visit = made
    return visit


def _new_event(
    kind: EventType,
    driver_id: str,
    at_ns: int,
    zone_id: str,
    zone_version: int,
    location: Location,
    new_status: Status | None = None,
) -> Event:
    """`Event(kind, driver_id, at_ns, zone_id, zone_version, location, new_status=...)`,
    made as its fields (see domain.fields): the zone events of an update, and the
    driver.online of a first fix."""
    made = _EVENT_FIELDS()
    made.type = kind
    made.driver_id = driver_id
    made.at_ns = at_ns
    made.zone_id = zone_id
    made.zone_version = zone_version
    made.location = location
    made.old_status = None
    made.new_status = new_status
    made.zone_deleted = False
    made.__class__ = Event
    event: Event = made
    return event


def _state(
    fix_ns: int | None,
    seen_ns: int | None,
    online: bool,
    status: Status | None,
    visits: tuple[Visit, ...],
    settled: Settled | None,
) -> TrackerState:
    """`TrackerState(fix_ns, seen_ns, online, status, visits, settled)`, made as its fields
    (see domain.fields; a frozen dataclass's __init__ sets each field through
    object.__setattr__): made once per accepted update."""
    made = _TRACKER_STATE_FIELDS()
    made.last_fix_ns = fix_ns
    made.last_seen_ns = seen_ns
    made.online = online
    made.status = status
    made.visits = visits
    made.settled = settled
    made.__class__ = TrackerState
    state: TrackerState = made
    return state


def _online_state(
    fix_ns: int,
    seen_ns: int,
    status: Status,
    visits: tuple[Visit, ...],
    settled: Settled | None,
) -> TrackerState:
    """`TrackerState(fix_ns, seen_ns, True, status, visits, settled)` (see _state)."""
    return _state(fix_ns, seen_ns, True, status, visits, settled)


def _next_timer(visit: Visit, dwell_ns: int, settle_ns: int) -> float:
    """The first fix time at which `visit` may change at the same place: settled in (not
    entered yet), settled out (outside in the band), or its dwell due; inf if none."""
    if not visit.entered:
        return visit.since_ns + settle_ns
    until = math.inf
    if visit.outside_since_ns is not None:
        until = visit.outside_since_ns + settle_ns
    if not visit.dwelled and dwell_ns > 0:
        dwell_at = visit.since_ns + dwell_ns
        if dwell_at < until:  # noqa: PLR1730 (a call to min() costs several times more)
            until = dwell_at
    return until


def _earliest_timer(
    visits: Iterable[Visit],
    zone_of: Callable[[str], Zone | None],
    settle_ns: int,
    floor: float,
) -> float:
    """The earliest `_next_timer` of `visits`, knowing none is before `floor`: a visit whose
    timer is `floor` ends the search (visits entered together share their dwell timer)."""
    earliest = math.inf
    for visit in visits:
        zone = zone_of(visit.zone_id)
        timer = _next_timer(visit, 0 if zone is None else zone.dwell_ns, settle_ns)
        if timer <= floor:
            return floor
        if timer < earliest:  # noqa: PLR1730 (a call to min() costs several times more)
            earliest = timer
    return earliest


def sweep_stale(
    state: TrackerState, driver_id: str, now_ns: int, stale_after_ns: int
) -> tuple[TrackerState, Event | None]:
    """driver.offline for a driver online but unseen for more than `stale_after_ns` (the same
    test as dispatch's `stale`), timed when it became stale; else the state unchanged."""
    seen = state.last_seen_ns
    if not state.online or seen is None or seen >= now_ns - stale_after_ns:
        return state, None
    event = Event(EventType.DRIVER_OFFLINE, driver_id, seen + stale_after_ns)
    return replace(state, online=False), event


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event as the log holds it: `event_id` strictly increasing in log (commit) order,
    `recorded_at_ns` when the transaction that logged it ran."""

    event_id: int
    recorded_at_ns: int
    event: Event


#: json.dumps(..., separators=(",", ":")) without building an encoder per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _location_json(loc: Location) -> str | None:
    """``[lat,lon,speed,heading]`` as json.dumps writes it (float repr), or None when a value
    is not a finite float (then json.dumps itself is used)."""
    values = (loc.latitude, loc.longitude, loc.speed_mps, loc.heading_degrees)
    for v in values:
        if type(v) is not float or not math.isfinite(v):
            return None
    return "[" + ",".join(map(float.__repr__, values)) + "]"


def event_bodies(events: Iterable[Event]) -> list[str]:
    """`event_body` of each event, in order, written directly (the same text as json.dumps
    gives; it decides only for a value of another type, or a location that is not finite),
    and an update's location formatted once for all the events it caused."""
    bodies: list[str] = []
    append = bodies.append
    loc_text: dict[int, str | None] = {}
    for event in events:
        loc = event.location
        version = event.zone_version
        if type(version) is not int:
            append(event_body(event))
            continue
        text: str | None = ""
        if loc is not None:
            key = id(loc)
            if key in loc_text:
                text = loc_text[key]
            else:
                text = loc_text[key] = _location_json(loc)
            if text is None:
                append(event_body(event))
                continue
        old, new = event.old_status, event.new_status
        if old is None and new is None and not event.zone_deleted and text:
            # A zone event, by far the most common.
            append(f'{{"loc":{text},"zv":{version}}}' if version else f'{{"loc":{text}}}')
            continue
        parts = [f'"loc":{text}'] if text else []
        if old is not None:
            parts.append('"old":' + _quoted(old.value))
        if new is not None:
            parts.append('"new":' + _quoted(new.value))
        if event.zone_deleted:
            parts.append('"deleted":true')
        if version:
            parts.append(f'"zv":{version}')
        append("{" + ",".join(parts) + "}")
    return bodies


def event_body(event: Event) -> str:
    """The event's fields other than type, driver, zone and time as compact JSON: the form
    the log stores beside its indexed columns (`event_from_row` reads it back)."""
    doc: dict[str, Any] = {}
    loc = event.location
    if loc is not None:
        doc["loc"] = [loc.latitude, loc.longitude, loc.speed_mps, loc.heading_degrees]
    if event.old_status is not None:
        doc["old"] = event.old_status.value
    if event.new_status is not None:
        doc["new"] = event.new_status.value
    if event.zone_deleted:
        doc["deleted"] = True
    if event.zone_version:
        doc["zv"] = event.zone_version
    return _COMPACT.encode(doc)


def event_from_row(
    event_id: int,
    kind: str,
    driver_id: str,
    zone_id: str,
    at_ns: int,
    recorded_at_ns: int,
    body: str,
) -> LoggedEvent:
    """A logged event from the log's columns (the inverse of `event_body`)."""
    doc = json.loads(body)
    raw = doc.get("loc")
    location = (
        None if raw is None else new_location(driver_id, raw[0], raw[1], raw[2], raw[3], at_ns)
    )
    old, new = doc.get("old"), doc.get("new")
    event = Event(
        EventType(kind),
        driver_id,
        at_ns,
        zone_id,
        int(doc.get("zv", 0)),
        location,
        None if old is None else Status(old),
        None if new is None else Status(new),
        bool(doc.get("deleted", False)),
    )
    return LoggedEvent(event_id, recorded_at_ns, event)


_LOGGED_FIELDS = fields_of(LoggedEvent)


def logged_events(
    ids: Iterable[int], recorded_at_ns: int, events: Iterable[Event]
) -> list[LoggedEvent]:
    """`events` as the log returns them once logged with `ids` (one each, in order) at
    `recorded_at_ns`: what a store hands to its listeners after the commit, instead of
    their reading the events back. Equal to `event_from_row` of the stored rows: an event's
    location reads back as the driver's fix at the event's time, which a tracker's location
    already is (one is made anew otherwise)."""
    logged: list[LoggedEvent] = []
    append = logged.append
    for event_id, event in zip(ids, events, strict=True):
        loc = event.location
        if loc is not None and (
            loc.recorded_at_ns != event.at_ns or loc.driver_id != event.driver_id
        ):
            loc = new_location(
                event.driver_id,
                loc.latitude,
                loc.longitude,
                loc.speed_mps,
                loc.heading_degrees,
                event.at_ns,
            )
            event = replace(event, location=loc)  # noqa: PLW2901 - as the log reads it back
        made = _LOGGED_FIELDS()
        made.event_id = event_id
        made.recorded_at_ns = recorded_at_ns
        made.event = event
        made.__class__ = LoggedEvent
        append(made)
    return logged
