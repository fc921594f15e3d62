"""The repository and bus decorators that time every call on the ports and count failures."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from driver_service.domain import Driver, Location, Status
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.observability.metrics.core import LoopGauge
from driver_service.ports import (
    DriverRepository,
    FleetSubscription,
    LocationBus,
    Recorded,
    Subscription,
)


class InstrumentedRepository:
    """A DriverRepository that times every operation and counts failures; `record_locations`
    is the group commit, so its batch size is observed too."""

    def __init__(self, inner: DriverRepository, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._get = metrics.store_operation("get_driver")
        self._record = metrics.store_operation("record_locations")
        self._status = metrics.store_operation("set_status")
        self._history = metrics.store_operation("location_history")
        self._ping = metrics.store_operation("ping")
        self._batch = metrics.commit_batch_size

    async def get_driver(self, driver_id: str) -> Driver | None:
        seconds, errors = self._get
        start = time.perf_counter()
        try:
            return await self.inner.get_driver(driver_id)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        seconds, errors = self._record
        self._batch.observe(len(locations))
        start = time.perf_counter()
        try:
            return await self.inner.record_locations(locations)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        seconds, errors = self._status
        start = time.perf_counter()
        try:
            return await self.inner.set_status(driver_id, status, at_ns)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        seconds, errors = self._history
        start = time.perf_counter()
        try:
            return await self.inner.location_history(driver_id, start_ns, end_ns, limit)
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        return self.inner.drivers_seen_since(seen_since_ns, page_size)

    async def list_drivers(self, after_id: str, limit: int) -> list[Driver]:
        return await self.inner.list_drivers(after_id, limit)

    async def ping(self) -> None:
        seconds, errors = self._ping
        start = time.perf_counter()
        try:
            await self.inner.ping()
        except Exception:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - start)

    async def close(self) -> None:
        await self.inner.close()


class _CountedSubscription:
    """A subscription that leaves the watcher gauge exactly once, however often it is closed."""

    __slots__ = ("_gauge", "_inner", "_open")

    def __init__(self, inner: Subscription, gauge: LoopGauge) -> None:
        self._inner = inner
        self._gauge = gauge
        self._open = True
        gauge.inc()

    async def next(self) -> Location:
        return await self._inner.next()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._gauge.dec()
        self._inner.close()


class InstrumentedBus:
    """A LocationBus that times publishes, counts their failures and open subscriptions."""

    def __init__(self, inner: LocationBus, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self._seconds = metrics.bus_publish_seconds
        self._errors = metrics.bus_publish_errors
        self._watchers = metrics.watchers

    async def publish(self, locations: Sequence[Location]) -> None:
        start = time.perf_counter()
        try:
            await self.inner.publish(locations)
        except Exception:
            self._errors.inc()
            raise
        finally:
            self._seconds.observe(time.perf_counter() - start)

    async def subscribe(self, driver_id: str) -> Subscription:
        return _CountedSubscription(await self.inner.subscribe(driver_id), self._watchers)

    async def subscribe_fleet(self) -> FleetSubscription:
        return await self.inner.subscribe_fleet()

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
