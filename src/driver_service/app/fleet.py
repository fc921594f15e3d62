"""The whole fleet for a live map: every driver in keyset pages (whatever its status or age,
so OFFLINE and stale drivers are there too, and a fleet of any size), then what changes.

A view opens its changes first (`open_changes`: the bus's fleet subscription and the event
feed from its current head), then lists: a change committed after the listing was read
comes through the changes, one before it is in the listing, so nothing falls between. The
changes are the newest location of each driver that moved (coalesced by the bus, never a
backlog of every fix) and the driver.* events in log order (never dropped): online,
offline (stale) and status changes, OFFLINE included.

Page tokens follow Google's API design guide (`page_size`, `page_token`,
`next_page_token`): opaque to the caller, bounded page size, an empty token on the last
page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from driver_service.app.events import EventFeed
from driver_service.domain import (
    Driver,
    InvalidInput,
    Location,
    ShuttingDown,
    StoreUnavailable,
    validate_driver_id,
)
from driver_service.domain.events import EventType, LoggedEvent
from driver_service.ports import (
    DriverRepository,
    FleetSubscription,
    LocationBus,
    MissedLocations,
    SubscriptionClosed,
)

#: Drivers per page when the caller does not say.
DEFAULT_PAGE_SIZE = 500
#: The most drivers one page holds; a larger page_size gets this many (as the guide says).
MAX_PAGE_SIZE = 1000
#: The events of the fleet feed: what changes a driver's marker other than its position.
DRIVER_EVENTS = frozenset(
    {EventType.DRIVER_ONLINE, EventType.DRIVER_OFFLINE, EventType.DRIVER_STATUS_CHANGED}
)
_TOKEN_PREFIX = b"fleet1:"


def encode_page_token(after_id: str) -> str:
    return base64.urlsafe_b64encode(_TOKEN_PREFIX + after_id.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The driver id a token resumes after ("" for none); InvalidInput for a token this
    service did not give."""
    if not token:
        return ""
    bad = InvalidInput("page_token is not one this service gave (start again without it)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        after_id = raw.removeprefix(_TOKEN_PREFIX).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not raw.startswith(_TOKEN_PREFIX):
        raise bad
    try:
        return validate_driver_id(after_id, "page_token")
    except InvalidInput:
        raise bad from None


@dataclass(frozen=True, slots=True)
class FleetPage:
    drivers: list[Driver]
    #: Empty on the last page.
    next_page_token: str


class Relist:
    """A change that says: list the fleet again. The bus may have lost locations (its link
    to the other replicas dropped and is back), so drivers that stopped moving meanwhile
    would keep their old positions; the stream stays open and goes on from here."""

    __slots__ = ()


RELIST = Relist()
FleetChange = list[Location] | LoggedEvent | Relist


class FleetView:
    """Lists the fleet and follows its changes (one per HTTP front door)."""

    def __init__(
        self,
        repository: DriverRepository,
        bus: LocationBus,
        events: EventFeed | None,
        stale_after_ns: int,
    ) -> None:
        self._repository = repository
        self._bus = bus
        self._events = events
        self.stale_after_ns = stale_after_ns

    async def list_page(self, page_size: int, page_token: str) -> FleetPage:
        if page_size < 0:
            raise InvalidInput("page_size must not be negative")
        size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
        after_id = decode_page_token(page_token)
        try:
            drivers = await self._repository.list_drivers(after_id, size)
        except Exception as exc:
            raise StoreUnavailable("driver store is unavailable; retry shortly") from exc
        more = len(drivers) == size
        return FleetPage(drivers, encode_page_token(drivers[-1].driver_id) if more else "")

    def is_stale(self, driver: Driver, now_ns: int) -> bool:
        """No event for longer than the server's stale-after (what driver.offline says)."""
        return now_ns - driver.last_seen_at_ns > self.stale_after_ns

    async def open_changes(self) -> FleetChanges:
        """The changes from now on, subscribed before this returns."""
        events = None
        if self._events is not None:
            head = await self._events.last_event_id()
            events = self._events.watch(head, lambda e: e.event.type in DRIVER_EVENTS)
        return FleetChanges(await self._bus.subscribe_fleet(), events)


class FleetChanges:
    """Location batches and driver events as they come, merged, and RELIST when the bus may
    have lost locations; ends with ShuttingDown if the bus closes. Events are never dropped
    (the feed keeps a cursor for each watcher)."""

    def __init__(
        self, locations: FleetSubscription, events: AsyncIterator[LoggedEvent] | None
    ) -> None:
        self._locations = locations
        self._events = events
        self._pending_locations: asyncio.Future[list[Location]] | None = None
        self._pending_event: asyncio.Future[LoggedEvent] | None = None

    def __aiter__(self) -> FleetChanges:
        return self

    async def __anext__(self) -> FleetChange:
        if self._pending_locations is None:
            self._pending_locations = asyncio.ensure_future(self._locations.next_batch())
        if self._events is not None and self._pending_event is None:
            self._pending_event = asyncio.ensure_future(anext(self._events))
        waits: set[asyncio.Future[Any]] = {self._pending_locations}
        if self._pending_event is not None:
            waits.add(self._pending_event)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self._pending_event is not None and self._pending_event in done:
            pending, self._pending_event = self._pending_event, None
            try:
                return pending.result()
            except StopAsyncIteration:  # the feed closed: the server is stopping
                raise ShuttingDown("server is shutting down; reconnect") from None
        pending_locations, self._pending_locations = self._pending_locations, None
        try:
            return pending_locations.result()
        except MissedLocations:
            return RELIST
        except SubscriptionClosed:
            raise ShuttingDown("server is shutting down; reconnect") from None

    async def aclose(self) -> None:
        for pending in (self._pending_locations, self._pending_event):
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        self._locations.close()
        if self._events is not None:
            with contextlib.suppress(Exception):
                await self._events.aclose()  # type: ignore[attr-defined]
