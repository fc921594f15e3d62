"""The EventEvaluator a store calls inside its transactions: zones and the tracker.

It holds the `ZoneIndex` of the zones version it last loaded. The store compares that
version with the stored one in each transaction that evaluates (PostgreSQL: one primary-key
read; SQLite, whose one process makes every zone change: the version it read after the last
change) and reloads when they differ, so every replica evaluates each update against the zones
committed before it: the replica that changed a zone and every other one alike, with no
polling and no notification to miss. A reload parses only the zones whose version changed
(parsed zones are kept by id and version), so it costs one small query when nothing did.

With `skip_near` (off by default: measured, it costs more than it saves at the density of
`bench.zones`, see BENCHMARKS.md "Zones"), a driver that has not moved far enough to change
anything skips the lookup. When a fix is looked up near its driver's previous looked-up fix
(the driver is not jumping about), the evaluator also asks the index for its clear radius
(`ZoneIndex.clear_radii`: no band edge of any zone nearer than that), and the driver's next
fixes strictly inside that disc, less `CLEAR_MARGIN_DEG`, take the anchor's `where` map
instead of a lookup: it is the map they would get. A radius costs about five lookups, so a
driver whose radii do not pay (zones so dense that the nearest edge is a step or two away)
measures them ever less often. The tracker still judges each fix (its `Settled` memo then
skips its per-zone loop unless a settle or dwell timer is due). The discs are kept in memory
only, never stored, for the index they were measured against: all are dropped when the
index changes and on restart; a driver's is not used while the driver has no state (new, or
erased) and is replaced at its next fix. The port has no erasure hook, so an erased
driver's last disc (one position) stays in memory until then.

`logged` forwards the newest committed event id to a listener (app/events.py's feed), which
wakes this process's watchers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from driver_service.domain import Location, Status
from driver_service.domain.events import NEW_DRIVER, Event, TrackerState, ZoneTracker
from driver_service.domain.zones import Where, Zone, ZoneIndex

#: Taken off a clear radius (degrees of the lon/lat plane, ~1 cm) before a fix inside it skips
#: its lookup: GEOS's and haversine's rounding (~1e-12 degree) is far smaller, so a fix on an
#: edge is never mistaken for one just short of it.
CLEAR_MARGIN_DEG = 1e-7
#: A looked-up fix this much beyond its driver's last disc (degrees) gets a clear radius of
#: its own; a fix farther from the last one (a jump, not driving) does not, so updates that
#: never stay near each other do not pay for a radius they would never use.
NEAR_DEG = 0.002

#: A radius costs about five lookups (a GEOS distance to the rings of every zone near): one
#: followed by fewer skips than this did not pay, and the driver's next radius waits for
#: twice as many lookups as the last wait (at most MAX_BACKOFF); one that paid resets it.
PAYING_SKIPS = 5
MAX_BACKOFF = 64

#: A driver's last looked-up fix: (longitude, latitude, the square of the radius a next fix
#: must be strictly within to skip its lookup or -1.0, that fix's where map, its clear radius
#: or 0.0 if none was measured, the backoff, lookups still to wait before measuring again).
_Disc = tuple[float, float, float, Mapping[str, Where], float, int, int]


class ZoneEvaluator:
    """Implements ports.EventEvaluator over a swappable ZoneIndex."""

    def __init__(self, tracker: ZoneTracker | None = None, *, skip_near: bool = False) -> None:
        self._tracker = tracker or ZoneTracker()
        self._skip_near = skip_near
        self._discs: dict[str, _Disc] = {}
        #: Fixes each driver took from its disc since its radius was measured.
        self._skips: dict[str, int] = {}
        #: The token of the index the discs were measured against.
        self._discs_token = 0
        self._index = ZoneIndex()
        #: -1: nothing loaded yet, so the first transaction loads whatever is stored.
        self._version = -1
        self._listeners: list[Callable[[int], None]] = []

    @property
    def zones_version(self) -> int:
        return self._version

    @property
    def index(self) -> ZoneIndex:
        return self._index

    def outdated_zones(self, live: Mapping[str, int]) -> list[str]:
        index = self._index
        outdated = []
        for zone_id, version in live.items():
            zone = index.get(zone_id)
            if zone is None or zone.version != version:
                outdated.append(zone_id)
        return outdated

    def load_zones(self, version: int, live: Mapping[str, int], fetched: Iterable[Zone]) -> None:
        by_id = {zone.zone_id: zone for zone in fetched}
        zones: list[Zone] = []
        for zone_id in live:
            zone = by_id.get(zone_id) or self._index.get(zone_id)
            if zone is None:  # the store handed over less than it was asked for: a bug
                raise RuntimeError(f"zone {zone_id!r} was not loaded")
            zones.append(zone)
        self._index = ZoneIndex(zones)
        self._version = version

    def on_locations(
        self, states: Mapping[str, TrackerState], advanced: Sequence[Location]
    ) -> tuple[dict[str, TrackerState], list[Event]]:
        index = self._index
        found: Sequence[Mapping[str, Where]]
        if self._skip_near and len(index):
            found = self._locate(states, advanced, index)
        else:
            found = index.locate_many(
                [loc.latitude for loc in advanced], [loc.longitude for loc in advanced]
            )
        tracker = self._tracker
        new_states: dict[str, TrackerState] = {}
        events: list[Event] = []
        for loc, where in zip(advanced, found, strict=True):
            driver_id = loc.driver_id
            state = new_states.get(driver_id) or states.get(driver_id) or NEW_DRIVER
            state, caused = tracker.on_location(state, loc, index, where)
            new_states[driver_id] = state
            events.extend(caused)
        return new_states, events

    def _locate(
        self, states: Mapping[str, TrackerState], advanced: Sequence[Location], index: ZoneIndex
    ) -> list[Mapping[str, Where]]:
        """`index.locate_many` of each fix, skipping the fixes inside their driver's disc."""
        discs = self._discs
        skips = self._skips
        if self._discs_token != index.token:
            discs.clear()
            skips.clear()
            self._discs_token = index.token
        found: list[Mapping[str, Where]] = []
        todo: list[int] = []
        for i, loc in enumerate(advanced):
            disc = discs.get(loc.driver_id)
            if disc is not None:
                dx = loc.longitude - disc[0]
                dy = loc.latitude - disc[1]
                if dx * dx + dy * dy < disc[2] and loc.driver_id in states:
                    found.append(disc[3])
                    skips[loc.driver_id] = skips.get(loc.driver_id, 0) + 1
                    continue
            found.append({})
            todo.append(i)
        if not todo:
            return found
        looked = index.locate_many(
            [advanced[i].latitude for i in todo], [advanced[i].longitude for i in todo]
        )
        measure: dict[str, int] = {}
        for i, where in zip(todo, looked, strict=True):
            loc = advanced[i]
            driver_id, lon, lat = loc.driver_id, loc.longitude, loc.latitude
            found[i] = where
            disc = discs.get(driver_id)
            if disc is None or driver_id not in states:
                discs[driver_id] = (lon, lat, -1.0, where, 0.0, 0, 0)
                measure.pop(driver_id, None)
                continue
            _, _, _, _, radius, backoff, wait = disc
            if radius > 0.0:  # measured at the last lookup: did it pay?
                backoff = 0 if skips.pop(driver_id, 0) >= PAYING_SKIPS else backoff * 2 + 1
                wait = backoff = min(backoff, MAX_BACKOFF)
            else:
                wait -= 1
            discs[driver_id] = (lon, lat, -1.0, where, 0.0, backoff, wait)
            dx = lon - disc[0]
            dy = lat - disc[1]
            reach = radius + NEAR_DEG
            if wait <= 0 and dx * dx + dy * dy < reach * reach:
                measure[driver_id] = i
            else:
                measure.pop(driver_id, None)
        if measure:
            self._measure(index, [advanced[i] for i in measure.values()])
        return found

    def _measure(self, index: ZoneIndex, anchors: Sequence[Location]) -> None:
        """Give each of these looked-up fixes (the last of its driver) its clear radius."""
        discs = self._discs
        radii = index.clear_radii(
            [loc.latitude for loc in anchors], [loc.longitude for loc in anchors]
        )
        for loc, radius in zip(anchors, radii, strict=True):
            lon, lat, _, where, _, backoff, wait = discs[loc.driver_id]
            inner = radius - CLEAR_MARGIN_DEG
            reach_sq = inner * inner if inner > 0.0 else -1.0
            discs[loc.driver_id] = (lon, lat, reach_sq, where, radius, backoff, wait)
            self._skips.pop(loc.driver_id, None)

    def on_status(
        self, state: TrackerState, driver_id: str, status: Status, at_ns: int
    ) -> tuple[TrackerState, list[Event]]:
        new_state, events = self._tracker.on_status(state, driver_id, status, at_ns)
        return new_state, list(events)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(last_event_id)` after each commit that logged events."""
        self._listeners.append(listener)

    def logged(self, last_event_id: int) -> None:
        for listener in self._listeners:
            listener(last_event_id)
