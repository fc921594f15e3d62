"""The EventEvaluator a store calls inside its transactions: zones and the tracker.

It holds the `ZoneIndex` of the zones version it last loaded. The store compares that
version with the stored one in each transaction that evaluates (PostgreSQL: one primary-key
read; SQLite, whose one process makes every zone change: the version it read after the last
change) and reloads when they differ, so every replica evaluates each update against the zones
committed before it: the replica that changed a zone and every other one alike, with no
polling and no notification to miss. A reload parses only the zones whose version changed
(parsed zones are kept by id and version), so it costs one small query when nothing did.

`logged` hands the events a commit logged to its listeners (app/events.py's feed, webhook
delivery, the event publisher), which wake this process's watchers and senders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from driver_service.domain import Location, Status
from driver_service.domain.events import (
    Event,
    LoggedEvent,
    TrackerState,
    ZoneTracker,
    times_only,
)
from driver_service.domain.zones import Zone, ZoneIndex
from driver_service.resilience.failure_log import FailureLog

log = logging.getLogger(__name__)


class ZoneEvaluator:
    """Implements ports.EventEvaluator over a swappable ZoneIndex."""

    def __init__(self, tracker: ZoneTracker | None = None) -> None:
        self._tracker = tracker or ZoneTracker()
        self._index = ZoneIndex()
        #: Whether the index holds no zone (`times_only` asks for every driver of a commit:
        #: an attribute, not ZoneIndex.__len__'s frame).
        self._zoneless = True
        #: -1: nothing loaded yet, so the first transaction loads whatever is stored.
        self._version = -1
        self._listeners: list[Callable[[Sequence[LoggedEvent]], None]] = []
        self._listener_failures = FailureLog(log, "handing logged events to a listener")

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
        self._zoneless = not zones
        self._version = version

    def on_locations(
        self, states: Mapping[str, TrackerState], advanced: Sequence[Location]
    ) -> tuple[dict[str, TrackerState], list[Event]]:
        index = self._index
        if not len(index):  # no lookup, and no tracker call for most fixes
            return self._tracker.on_locations_nowhere(states, advanced, index)
        located = index.locate_keyed(
            [loc.latitude for loc in advanced], [loc.longitude for loc in advanced]
        )
        return self._tracker.on_locations_located(states, advanced, index, located)

    def times_only(self, state: TrackerState) -> bool:
        return self._zoneless and times_only(state)

    def on_status(
        self, state: TrackerState, driver_id: str, status: Status, at_ns: int
    ) -> tuple[TrackerState, list[Event]]:
        new_state, events = self._tracker.on_status(state, driver_id, status, at_ns)
        return new_state, list(events)

    def add_listener(self, listener: Callable[[Sequence[LoggedEvent]], None]) -> None:
        """Call `listener(events)` after each commit that logged events (see `logged`)."""
        self._listeners.append(listener)

    def logged(self, events: Sequence[LoggedEvent]) -> None:
        """Hand a commit's events to every listener. One that fails is logged (rate-limited)
        and the others still run: the commit stands and its caller is answered as stored,
        and the log holds the events for every reader (the feed's follower and poll, webhook
        delivery's cursors) whatever a listener missed."""
        for listener in self._listeners:
            try:
                listener(events)
            except Exception as error:  # noqa: BLE001 - a listener's bug must not fail a commit
                self._listener_failures.failed(error)
