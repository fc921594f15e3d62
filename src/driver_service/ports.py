"""The interfaces the application needs; `adapters/` and `app/fanout.py` implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from driver_service.domain import Driver, Location, Status
from driver_service.domain.events import Event, LoggedEvent, TrackerState
from driver_service.domain.webhooks import DeadLetter, Endpoint
from driver_service.domain.zones import Zone


class Recorded(list[Location]):
    """What `record_locations` did with a batch. As a list (what the method returned before
    conflicts were reported, so callers that read it as one keep working): the locations
    that became their driver's current one, in batch order. `conflicts`: the updates refused
    because their driver already has a different fix stored at the same timestamp (the
    first stored wins; see domain.conflicts), in batch order; an identical resend is not one."""

    __slots__ = ("conflicts",)

    def __init__(
        self, advanced: Iterable[Location] = (), conflicts: tuple[Location, ...] = ()
    ) -> None:
        super().__init__(advanced)
        self.conflicts = conflicts


class DriverRepository(Protocol):
    """Durable driver state and location history.

    Every method that writes returns only after the data is committed durably, so the
    caller may acknowledge it. Reads of current state must not scan history.
    """

    async def get_driver(self, driver_id: str) -> Driver | None: ...

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        """Store a batch in one transaction. History holds one fix per driver and timestamp,
        and the first stored wins for good: an identical resend stores nothing and succeeds;
        a different fix for a key already stored, or earlier in the batch, is refused and
        reported in `Recorded.conflicts`. A location becomes its driver's current one only
        if it is newer (a refused one never is). Return those that became current, in the
        order given. Finding conflicts may cost only when the batch has duplicate keys."""
        ...

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        """Upsert the driver's status; `at_ns` counts as an accepted event for last_seen_at."""
        ...

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        """History of one driver with start_ns <= recorded_at_ns < end_ns, oldest first."""
        ...

    def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        """Current state of every driver whose last event is at or after `seen_since_ns`, in
        pages of at most `page_size` (one short query each, so a large fleet never becomes one
        huge result or one long transaction). For rebuilding derived state (live state in
        Redis, spatial indexes) from the store, the source of truth. Each driver present for
        the whole iteration appears exactly once; one created meanwhile may be missed (its
        own update reaches the derived state anyway)."""
        ...

    async def list_drivers(self, after_id: str, limit: int) -> list[Driver]:
        """Current state of at most `limit` drivers whose ids sort after `after_id`, by id:
        one keyset page of the whole fleet, whatever its status or age (a listing resumes
        after the last id it got; nothing is held open between pages)."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot serve requests, commits included: health must not say
        SERVING while updates could not be stored (a full disk)."""
        ...

    async def close(self) -> None: ...


#: Fixes per page of a history read: one short query each (~10 ms on either store), so a
#: long range never becomes one huge result and ingestion on SQLite's single writer thread
#: waits for one page at most.
HISTORY_PAGE_SIZE = 5000

#: One stored fix of a known driver as a history read returns it, without building a
#: Location: (latitude, longitude, speed_mps, heading_degrees, recorded_at_ns).
HistoryRow = tuple[float, float, float, float, int]


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What erasing one driver removed from the durable store: history, the current state
    row, the zones/events tracker state, and the driver's events in the event log (they
    carry positions: erasure removes them too, see docs/history.md)."""

    history_fixes: int
    driver_records: int
    tracker_states: int = 0
    events: int = 0


@dataclass(frozen=True, slots=True)
class HistoryStats:
    """Size of the stored history, for metrics: `rows` and `bytes` may be estimates (the
    store's statistics), `oldest_ns` is the oldest fix kept, None when history is empty."""

    rows: int
    bytes: int
    oldest_ns: int | None


class HistoryStore(Protocol):
    """Reading, expiring and erasing location history (the durable adapters implement it
    beside DriverRepository)."""

    def history_pages(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        page_size: int = HISTORY_PAGE_SIZE,
    ) -> AsyncIterator[list[Location]]:
        """The fixes of one driver with since_ns <= recorded_at_ns < until_ns in fix-time
        order (a fix that arrived late is in its place; one fix per timestamp), in pages of
        at most `page_size`, one short query each (keyset on the fix time, no open cursor
        between pages). Raises DriverNotFound (on the first iteration) for a driver the
        store does not know; a known driver without fixes in the range yields nothing."""
        ...

    def history_row_pages(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        page_size: int = HISTORY_PAGE_SIZE,
    ) -> AsyncIterator[list[HistoryRow]]:
        """What history_pages yields, as plain rows (the fast path of an unthinned trail):
        the same order, pages and errors; the next page may be read while the caller
        works on this one."""
        ...

    #: Seconds the store has spent on expiry steps (SQLite: on its writer thread, not the
    #: wait for it behind ingestion's commits): what retention's pace is measured in.
    expiry_busy_s: float

    async def expire_history(self, before_ns: int, batch: int = 1000) -> int:
        """One short step of retention: remove fixes older than `before_ns`, never one at
        or after it; return how many were removed (0: nothing left to remove now; call
        again while it is positive; the caller paces the steps). SQLite removes at most
        `batch` rows in one short transaction; PostgreSQL drops one whole daily partition
        (rows of the day that holds `before_ns` wait for that day to pass; readers clamp
        ranges to the window, so they never see them) and returns its estimated rows (at
        least 1), or deletes at most `batch` rows of the default partition."""
        ...

    async def prepare_history(self, now_ns: int) -> None:
        """Make storage for the fixes to come ahead of time (PostgreSQL: the daily
        partitions around `now_ns`); nothing to do on SQLite."""
        ...

    async def history_stats(self) -> HistoryStats: ...

    async def forget_driver(self, driver_id: str) -> Forgotten:
        """Erase the driver's history (in short batches), current state, tracker state and
        logged events. A driver unknown to the store raises DriverNotFound."""
        ...


class SubscriptionClosed(Exception):
    """The subscription ended because the bus or the server is shutting down."""


class MissedLocations(Exception):
    """The bus may have lost locations for this subscription (its link to the other
    processes dropped and is back): read the driver's current location again. The
    subscription stays open and receives every location published from now on."""


class Subscription(Protocol):
    """Live locations of one driver, newest last; a slow reader loses the oldest, never blocks."""

    async def next(self) -> Location:
        """Wait for the next location; raise SubscriptionClosed when the subscription ends,
        MissedLocations (once per gap) when locations may have been lost."""
        ...

    def close(self) -> None: ...


class FleetSubscription(Protocol):
    """Every driver's locations, coalesced: while the reader is away only each driver's
    newest is kept, so what waits is bounded by the fleet's size, never by its rate."""

    async def next_batch(self) -> list[Location]:
        """The newest location of each driver that moved since the last call (waits for one);
        raises SubscriptionClosed once closed, MissedLocations (once per gap) when locations
        may have been lost (list the fleet again)."""
        ...

    def close(self) -> None: ...


class LocationBus(Protocol):
    """Fan-out of accepted current locations to live watchers."""

    async def publish(self, locations: Sequence[Location]) -> None: ...

    async def subscribe(self, driver_id: str) -> Subscription: ...

    async def subscribe_fleet(self) -> FleetSubscription:
        """Every location published from now on, of every driver (a live fleet map); costs
        nothing while no one holds one."""
        ...

    async def ping(self) -> None:
        """Raise if live fan-out is not working (for health checks)."""
        ...

    async def close(self) -> None: ...


class ZoneRepository(Protocol):
    """Durable zones, shared by every replica. Ids are never reused: a deleted zone stays as
    a tombstone, so an event naming a zone id always means that one zone."""

    async def create_zone(self, zone: Zone, now_ns: int) -> Zone:
        """Store a new zone at version 1 (created and updated at `now_ns`); ZoneExists if its
        id was ever used."""
        ...

    async def get_zone(self, zone_id: str) -> Zone:
        """The live zone; ZoneNotFound if there is none (or it was deleted)."""
        ...

    async def list_zones(self, after_id: str, limit: int) -> list[Zone]:
        """Live zones with id > `after_id`, ordered by id, at most `limit`."""
        ...

    async def update_zone(self, zone: Zone, expected_version: int, now_ns: int) -> Zone:
        """Replace a live zone (version + 1); with `expected_version` non-zero only if the
        stored version is that one (VersionMismatch otherwise); ZoneNotFound if none."""
        ...

    async def delete_zone(self, zone_id: str, expected_version: int, now_ns: int) -> None:
        """Turn a live zone into a tombstone (as update_zone for the checks)."""
        ...


class EventEvaluator(Protocol):
    """What a store calls inside its location and status transactions to derive events
    (the transactional outbox): pure computation over the state the store holds locked.

    `zones_version` is the version of the zones it evaluates against; before evaluating, the
    store compares it with the stored zones version (in the same transaction) and, if they
    differ, hands over the live zones with `load_zones`, so a zone change counts from the
    next update on every replica and a stale index never invents a zone.exit."""

    @property
    def zones_version(self) -> int: ...

    def outdated_zones(self, live: Mapping[str, int]) -> list[str]:
        """Of the live zones (id -> version), those it holds no parsed copy of."""
        ...

    def load_zones(self, version: int, live: Mapping[str, int], fetched: Iterable[Zone]) -> None:
        """Evaluate against exactly the `live` zones from now on: `fetched` are the ones
        `outdated_zones` named; the rest it holds already."""
        ...

    def on_locations(
        self, states: Mapping[str, TrackerState], advanced: Sequence[Location]
    ) -> tuple[dict[str, TrackerState], list[Event]]:
        """The new state of each driver with an advanced location (in batch order) and the
        events to log, in order. Drivers absent from `states` are new."""
        ...

    def on_status(
        self, state: TrackerState, driver_id: str, status: Status, at_ns: int
    ) -> tuple[TrackerState, list[Event]]: ...

    def times_only(self, state: TrackerState) -> bool:
        """Whether every fix newer than `state`'s fix changes no more of it than its fix and
        last-seen times and logs no event (against the zones it holds now): a store that
        keeps those times in the driver's row may leave such a driver out of
        `on_locations`."""
        ...

    def logged(self, events: Sequence[LoggedEvent]) -> None:
        """A commit logged `events` (at least one; in id order, equal to what `read_events`
        returns for them): called by the store after the commit, in the event loop's thread,
        in commit order as far as that thread sees it. Wakes this process's watchers."""
        ...


class EventLog(Protocol):
    """The event log (outbox) a store writes with its location commits."""

    async def read_events(self, after_id: int, limit: int) -> list[LoggedEvent]:
        """Logged events with id > `after_id`, oldest first, at most `limit`. Every event
        with a smaller id than one returned is committed and was returned or will never
        exist: ids are assigned in commit order."""
        ...

    async def last_event_id(self) -> int:
        """The newest logged event's id, 0 for an empty log."""
        ...

    async def oldest_event_id(self) -> int:
        """The oldest retained event's id, 0 for an empty log."""
        ...

    async def expire_events(self, before_ns: int, batch: int) -> int:
        """One step of retention: remove at most `batch` of the oldest events, only a prefix
        of the log (by id) whose every event was recorded before `before_ns`, and never the
        newest event (so the oldest retained id always tells how far the log was cut).
        Return how many were removed."""
        ...

    async def sweep_offline(self, now_ns: int, stale_after_ns: int) -> int:
        """Log driver.offline for each online driver unseen for more than `stale_after_ns`;
        idempotent across replicas (the state changes under the driver's lock, so only
        one sweep logs a given offline). Return how many were logged."""
        ...


class WebhookStore(Protocol):
    """Webhook endpoints, their delivery state and dead letters, in the durable store.

    Delivery work is leased: `claim_endpoints` hands an endpoint to one owner (a replica)
    until `lease_until_ns`; every later write of its state names that owner and is refused
    (returns False) once another owner took the endpoint over, so a replica that stalled past
    its lease can never move a cursor it no longer owns."""

    async def add_endpoint(self, endpoint: Endpoint) -> None:
        """WebhookExists if the id is taken."""
        ...

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """WebhookNotFound if there is none."""
        ...

    async def list_endpoints(self) -> list[Endpoint]: ...

    async def remove_endpoint(self, endpoint_id: str) -> None:
        """The endpoint and its dead letters; WebhookNotFound if there is none."""
        ...

    async def set_secret(
        self, endpoint_id: str, secret: str, previous: str, previous_until_ns: int
    ) -> Endpoint: ...

    async def set_paused(self, endpoint_id: str, paused: bool) -> Endpoint: ...

    async def claim_endpoints(
        self, owner: str, now_ns: int, lease_until_ns: int, head: int, limit: int
    ) -> list[Endpoint]:
        """Lease up to `limit` endpoints that have work (cursor < head, or a replay queued),
        are due (next_attempt_ns <= now_ns), not paused, and not leased to another owner
        unexpired. Each is leased to `owner` until `lease_until_ns`."""
        ...

    async def save_progress(self, endpoint: Endpoint, owner: str, lease_until_ns: int) -> bool:
        """Write the endpoint's delivery state (cursor, attempts, next attempt, failures,
        last error) if `owner` still holds it, extending the lease; False otherwise."""
        ...

    async def dead_letter(
        self, endpoint: Endpoint, owner: str, letter: DeadLetter, lease_until_ns: int
    ) -> bool:
        """In one transaction: store (or replace) the dead letter and write the endpoint's
        state (its cursor past the event), if `owner` still holds it."""
        ...

    async def release(self, endpoint_id: str, owner: str) -> None:
        """End `owner`'s lease now (nothing if another owner holds it)."""
        ...

    async def list_dead_letters(
        self, endpoint_id: str, after_event_id: int, limit: int
    ) -> list[DeadLetter]: ...

    async def replay_dead_letters(self, endpoint_id: str, event_ids: Sequence[int]) -> int:
        """Queue dead letters for delivery again (all of the endpoint's if `event_ids` is
        empty) and make the endpoint due now; return how many were queued."""
        ...

    async def next_replay(self, endpoint_id: str) -> DeadLetter | None:
        """The oldest dead letter queued for replay."""
        ...

    async def replayed(
        self, endpoint: Endpoint, owner: str, event_id: int, lease_until_ns: int
    ) -> bool:
        """A replayed dead letter was delivered: remove it and write the endpoint's state."""
        ...

    async def dead_letter_count(self) -> int: ...


class WebhookTransport(Protocol):
    """One HTTP POST to a webhook endpoint."""

    async def check_target(self, url: str) -> None:
        """ForbiddenTarget unless every address the URL's host resolves to may be called."""
        ...

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> int:
        """The response's status code. ForbiddenTarget for a host that resolves to an
        address we may not call (checked at every delivery: DNS can change); DeliveryError
        for any failure to get a response within `timeout_s` (connect, TLS, timeout, reset)."""
        ...

    async def close(self) -> None: ...


class DeliveryError(Exception):
    """No HTTP response: the message says why (timeout, refused, reset, TLS)."""


class EventSink(Protocol):
    """A message broker the event log is published to (NATS JetStream; Kafka or AMQP later).
    `publish` returns once the broker has stored the events, in order; each carries its event
    id as the broker's message id, so a republished event is deduplicated. The broker is also
    where publishing resumes: `last_published_id` is the newest event id it holds."""

    #: A short name for metrics and logs, e.g. "nats".
    name: str

    async def last_published_id(self) -> int:
        """The newest event id the broker has stored (0 if none): publishing resumes after it.
        Raises when the broker cannot be reached."""
        ...

    async def publish(self, events: Sequence[LoggedEvent]) -> None:
        """Publish `events` in order, each acknowledged before the next is sent; raises at the
        first that is not (the ones before it are stored)."""
        ...

    async def close(self) -> None: ...
