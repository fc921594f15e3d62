"""The interfaces the application needs; `adapters/` and `app/fanout.py` implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from driver_service.domain import Driver, Location, Status


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

    async def ping(self) -> None:
        """Raise if the store cannot serve requests, commits included: health must not say
        SERVING while updates could not be stored (a full disk)."""
        ...

    async def close(self) -> None: ...


#: Fixes per page of a history read: one short query each (~10 ms on either store), so a
#: long range never becomes one huge result and ingestion on SQLite's single writer thread
#: waits for one page at most.
HISTORY_PAGE_SIZE = 5000


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What erasing one driver removed from the durable store."""

    history_fixes: int
    driver_records: int


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

    async def expire_history(self, before_ns: int, batch: int = 1000) -> int:
        """One step of retention: remove fixes older than `before_ns`, never one at or after
        it; return how many were removed (0: nothing left to remove now; call again while
        it is positive). SQLite removes at most `batch` rows in one short transaction;
        PostgreSQL drops whole daily partitions (rows of the day that holds `before_ns`
        wait for that day to pass; readers clamp ranges to the window, so they never see
        them) and returns the dropped partitions' estimated rows."""
        ...

    async def prepare_history(self, now_ns: int) -> None:
        """Make storage for the fixes to come ahead of time (PostgreSQL: the daily
        partitions around `now_ns`); nothing to do on SQLite."""
        ...

    async def history_stats(self) -> HistoryStats: ...

    async def forget_driver(self, driver_id: str) -> Forgotten:
        """Erase the driver's history and current state (in short batches). A driver
        unknown to the store raises DriverNotFound."""
        ...


class SubscriptionClosed(Exception):
    """The subscription ended because the bus or the server is shutting down."""


class Subscription(Protocol):
    """Live locations of one driver, newest last; a slow reader loses the oldest, never blocks."""

    async def next(self) -> Location:
        """Wait for the next location; raise SubscriptionClosed when the subscription ends."""
        ...

    def close(self) -> None: ...


class LocationBus(Protocol):
    """Fan-out of accepted current locations to live watchers."""

    async def publish(self, locations: Sequence[Location]) -> None: ...

    async def subscribe(self, driver_id: str) -> Subscription: ...

    async def ping(self) -> None:
        """Raise if live fan-out is not working (for health checks)."""
        ...

    async def close(self) -> None: ...
