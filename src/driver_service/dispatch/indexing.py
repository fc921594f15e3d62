"""Keep a DriverIndex in step with accepted updates, without touching the ingest path's code:
decorators of the two ports every accepted change goes through.

- locations: the LocationWriter publishes what became current through the LocationBus, so
  `IndexingBus` moves those drivers in the index after the inner bus has published;
- statuses: `DriverTracking.change_status` goes through `DriverRepository.set_status`, so
  `IndexingRepository` puts the driver's committed state into the index.

A failing index never fails ingestion (the update is durable and published already); it is
logged, and the next update of that driver repairs its entry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from driver_service.dispatch.ports import DriverIndex
from driver_service.domain import Driver, Location, Status
from driver_service.ports import (
    DriverRepository,
    FleetSubscription,
    LocationBus,
    Recorded,
    Subscription,
)
from driver_service.resilience.failure_log import FailureLog

log = logging.getLogger(__name__)


class IndexingRepository:
    """A DriverRepository that tells the index about every committed status change."""

    def __init__(self, inner: DriverRepository, index: DriverIndex) -> None:
        self.inner = inner
        self._index = index
        self._failures = FailureLog(log, "indexing status changes", level=logging.WARNING)

    async def get_driver(self, driver_id: str) -> Driver | None:
        return await self.inner.get_driver(driver_id)

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        return await self.inner.record_locations(locations)

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        driver = await self.inner.set_status(driver_id, status, at_ns)
        try:
            await self._index.put((driver,))
        except Exception as exc:  # noqa: BLE001 - the status is stored; the index catches up
            self._failures.failed(exc, driver_id)
        else:
            self._failures.succeeded()
        return driver

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        return await self.inner.location_history(driver_id, start_ns, end_ns, limit)

    def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        return self.inner.drivers_seen_since(seen_since_ns, page_size)

    async def list_drivers(self, after_id: str, limit: int) -> list[Driver]:
        return await self.inner.list_drivers(after_id, limit)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class IndexingBus:
    """A LocationBus that moves drivers in the index once their locations are published.

    A driver the index does not know yet (first seen, or after a restart) is read from the
    repository once, so the index learns its status from the store, not from a guess.
    """

    def __init__(
        self, inner: LocationBus, index: DriverIndex, repository: DriverRepository
    ) -> None:
        self.inner = inner
        self._index = index
        self._repository = repository
        self._failures = FailureLog(log, "indexing locations", level=logging.WARNING)

    async def publish(self, locations: Sequence[Location]) -> None:
        await self.inner.publish(locations)
        try:
            unknown = await self._index.move(locations)
            if unknown:
                drivers = []
                for driver_id in dict.fromkeys(unknown):
                    driver = await self._repository.get_driver(driver_id)
                    if driver is not None:
                        drivers.append(driver)
                # fill, not put: a status change committed after this read has reached
                # the index already and must not be replaced by the older read.
                await self._index.fill(drivers)
        except Exception as exc:  # noqa: BLE001 - stored and published; the index catches up
            self._failures.failed(exc, f"{len(locations)} locations")
        else:
            self._failures.succeeded()

    async def subscribe(self, driver_id: str) -> Subscription:
        return await self.inner.subscribe(driver_id)

    async def subscribe_fleet(self) -> FleetSubscription:
        return await self.inner.subscribe_fleet()

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
