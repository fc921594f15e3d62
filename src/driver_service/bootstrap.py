"""The composition root: builds the adapters chosen by configuration and wires the services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from driver_service.bus import MemoryBus
from driver_service.config import REDIS_SCHEMES, ServerSettings
from driver_service.dispatch import (
    Dispatch,
    DriverIndex,
    IndexingBus,
    IndexingRepository,
    MemoryDriverIndex,
    RedisDriverIndex,
)
from driver_service.metrics import InstrumentedBus, InstrumentedRepository, ServiceMetrics
from driver_service.ports import DriverRepository, LocationBus
from driver_service.ratelimit import RateLimiter
from driver_service.service import DriverTracking
from driver_service.storage import SqliteRepository

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from driver_service.bus.redis import RedisBus
    from driver_service.dispatch.offers import CommandRouter

#: Key and channel prefix in Redis, so one Redis can serve several deployments.
REDIS_PREFIX = "ds:"


@dataclass
class Services:
    """The application services one server runs, over shared adapters."""

    tracking: DriverTracking
    dispatch: Dispatch

    async def close(self) -> None:
        await self.dispatch.close()
        await self.tracking.close()


async def open_store(settings: ServerSettings) -> DriverRepository:
    """The durable store named by `--store` (SQLite file by default)."""
    if settings.uses_postgres:
        from driver_service.storage.postgres import PostgresRepository

        assert settings.store is not None
        return await PostgresRepository.open(settings.store)
    return await SqliteRepository.open(settings.sqlite_path())


async def open_live(
    settings: ServerSettings, durable: DriverRepository
) -> tuple[DriverRepository, LocationBus, tuple[Redis, RedisBus] | None]:
    """The live-state layer and bus named by `--bus`: in-process, or Redis shared by every
    worker and replica (current state read from Redis, fan-out over pub/sub)."""
    if not settings.bus.startswith(REDIS_SCHEMES):
        return durable, MemoryBus(), None
    from driver_service.bus.redis import RedisBus, create_redis_client
    from driver_service.storage.live import LiveStateRepository

    client = create_redis_client(settings.bus)
    bus = RedisBus(client, prefix=REDIS_PREFIX)
    bus.start()
    # The repository closes the shared client last (DriverTracking closes the bus first).
    live = LiveStateRepository(durable, client, prefix=REDIS_PREFIX, close_client=True)
    return live, bus, (client, bus)


async def _build_tracking(
    settings: ServerSettings, metrics: ServiceMetrics | None, with_index: bool
) -> tuple[DriverTracking, DriverIndex | None, tuple[Redis, RedisBus] | None]:
    durable = await open_store(settings)
    try:
        repository, bus, redis = await open_live(settings, durable)
    except BaseException:
        await durable.close()
        raise
    limiter = (
        RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
    )
    rejected = None
    if metrics is not None:
        repository = InstrumentedRepository(repository, metrics)
        bus = InstrumentedBus(bus, metrics)
        rejected = {
            "invalid": metrics.rejected_invalid,
            "rate_limited": metrics.rejected_rate_limited,
            "conflict": metrics.rejected_conflict,
        }
    index: DriverIndex | None = None
    if with_index:
        # The spatial index follows every accepted update: in memory for one process, in
        # Redis when replicas share Redis (each replica's updates land in the same index).
        index = (
            MemoryDriverIndex() if redis is None
            else RedisDriverIndex(redis[0], prefix=REDIS_PREFIX)
        )  # fmt: skip
        repository = IndexingRepository(repository, index)
        bus = IndexingBus(bus, index, repository)
    tracking = DriverTracking(
        repository,
        bus,
        rate_limiter=limiter,
        count_rejection=None if rejected is None else lambda reason: rejected[reason].inc(),
    )
    if metrics is not None:
        metrics.count_sessions(lambda: tracking.session_count)
    await tracking.start()
    return tracking, index, redis


async def build_services(
    settings: ServerSettings, metrics: ServiceMetrics | None = None
) -> Services:
    """Tracking and dispatch over the configured adapters, instrumented when `metrics` is
    given (the server always gives it; tests may leave it out)."""
    tracking, index, redis = await _build_tracking(settings, metrics, with_index=True)
    assert index is not None
    # Commands and their state: this process's OfferBook, or Redis shared by every replica
    # (a command reaches the driver's session on whichever replica holds it).
    commands: CommandRouter | None = None
    if redis is not None:
        from driver_service.dispatch.redis_offers import RedisCommandRouter

        client, redis_bus = redis
        commands = RedisCommandRouter(client, redis_bus, tracking, prefix=REDIS_PREFIX)
    dispatch = Dispatch(tracking, index, stale_after_s=settings.stale_after, commands=commands)
    if metrics is not None:
        metrics.count_stale_drivers(lambda: dispatch.stale_drivers)
    await dispatch.start()
    return Services(tracking, dispatch)


async def build_tracking(
    settings: ServerSettings, metrics: ServiceMetrics | None = None
) -> DriverTracking:
    """Only the tracking service, without dispatch or its spatial index (for tests and
    benchmarks of the seed's service alone)."""
    tracking, _, _ = await _build_tracking(settings, metrics, with_index=False)
    return tracking
