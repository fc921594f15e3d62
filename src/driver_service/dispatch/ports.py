"""Dispatch's ports: the spatial index, where commands go, the sessions they reach, and the
store a rebuild reads. Each contract is in its docstrings; adapters live in
`dispatch.memory_index` and `dispatch.offer_book` (one process) and `adapters.redis` (replicas).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Protocol

from driver_service.dispatch.domain.commands import Command
from driver_service.dispatch.domain.drivers import IndexedDriver, NearbyDriver
from driver_service.domain import Driver, Location, Status

#: Drivers per page: one store query and one command per target each. Measured with 20,000
#: drivers on PostgreSQL + Redis: the longest event-loop stall while a rebuild runs beside
#: serving was ~80 ms with pages of 1,000, ~38 ms with 500, ~28 ms with 250 (the rebuild
#: itself ~1.5 s in each case), so ingestion waits at most about one group commit.
DEFAULT_PAGE_SIZE = 500


class DriverIndex(Protocol):
    """Where drivers are, kept in step with accepted updates, searchable by distance.

    Only drivers with a location and a status other than OFFLINE are searchable; a driver
    whose last event is older than the query's cutoff is never returned.
    """

    async def put(self, drivers: Sequence[Driver]) -> None:
        """Replace status and merge location/last-seen (never back in time) from the store's
        view of each driver: after a status change, or for a driver the index did not know."""
        ...

    async def fill(self, drivers: Sequence[Driver]) -> None:
        """Merge drivers read from the store by a rebuild, which may race with live updates:
        location and last-seen only move forward, and the status is taken only from a driver
        whose last event is newer than the entry's (an entry with an event as new or newer
        already holds the status of a later read). A driver that went OFFLINE after the read
        is not brought back."""
        ...

    async def move(self, locations: Sequence[Location]) -> list[str]:
        """Apply locations that became current; return the ids of drivers the index does not
        know (their status is unknown here: the caller reads them and calls `put`)."""
        ...

    async def nearby(
        self,
        latitude: float,
        longitude: float,
        radius_m: float,
        limit: int,
        statuses: Collection[Status],
        seen_after_ns: int,
    ) -> list[NearbyDriver]:
        """Up to `limit` drivers within `radius_m` whose last event is at or after
        `seen_after_ns`, nearest first (ties by driver id)."""
        ...

    async def get(self, driver_id: str) -> IndexedDriver | None: ...

    async def sweep(self, stale_before_ns: int) -> int:
        """Take drivers with no event since `stale_before_ns` out of the search structure;
        return how many known, non-OFFLINE drivers are stale now."""
        ...

    async def forget(self, driver_id: str) -> int:
        """Erase the driver from the index (searchable, stale and gone entries alike);
        return how many entries held it."""
        ...

    async def close(self) -> None: ...


class SessionHost(Protocol):
    """What a command router needs from this process's driver sessions (DriverTracking)."""

    session_listeners: list[Callable[[str], None]]

    def push_command(self, driver_id: str, command: object) -> bool: ...

    def has_session(self, driver_id: str) -> bool: ...


class CommandRouter(Protocol):
    """Where commands go and where their state lives: Dispatch's port.

    `on_session(driver_id)` is called (synchronously) when a session of this process starts
    speaking for a driver, `on_session_closed(driver_id)` when one of them ends; both must
    return at once (start background work if needed).
    """

    async def send(
        self, driver_id: str, command_id: str, payload: object, is_offer: bool, ttl_s: float
    ) -> Command:
        """Deliver now to the driver's open session (wherever it is) or queue for `ttl_s`."""
        ...

    async def get(self, command_id: str) -> Command:
        """The command as it is now; CommandNotFound if unknown or forgotten."""
        ...

    async def wait(self, command_id: str, timeout_s: float | None) -> Command:
        """The command once settled, or as it is when `timeout_s` runs out."""
        ...

    async def answer(self, offer_id: str, driver_id: str, accepted: bool) -> Command:
        """Record the driver's answer (see OfferBook.answer for the rules)."""
        ...

    async def queued(self, driver_id: str) -> int:
        """Commands waiting for the driver's next session."""
        ...

    async def connected(self, driver_id: str) -> bool:
        """Whether the driver has an open session that commands can reach."""
        ...

    async def forget(self, driver_id: str) -> int:
        """Erase every command of the driver: queued ones (never delivered afterwards; a
        waiter sees them EXPIRED or not found) and settled ones kept for their outcome.
        Return how many commands were removed."""
        ...

    def on_session(self, driver_id: str) -> None: ...

    def on_session_closed(self, driver_id: str) -> None: ...

    async def close(self) -> None: ...


class DriverSource(Protocol):
    """The one thing a rebuild needs of the store (`DriverRepository` has it)."""

    def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[list[Driver]]: ...
