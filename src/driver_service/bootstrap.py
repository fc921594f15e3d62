"""The composition root: builds the adapters chosen by configuration and wires the service."""

from __future__ import annotations

from driver_service.bus import MemoryBus
from driver_service.config import REDIS_SCHEMES, ServerSettings
from driver_service.metrics import InstrumentedBus, InstrumentedRepository, ServiceMetrics
from driver_service.ports import DriverRepository, LocationBus
from driver_service.ratelimit import RateLimiter
from driver_service.service import DriverTracking
from driver_service.storage import SqliteRepository

#: Key and channel prefix in Redis, so one Redis can serve several deployments.
REDIS_PREFIX = "ds:"


async def open_store(settings: ServerSettings) -> DriverRepository:
    """The durable store named by `--store` (SQLite file by default)."""
    if settings.uses_postgres:
        from driver_service.storage.postgres import PostgresRepository

        assert settings.store is not None
        return await PostgresRepository.open(settings.store)
    return await SqliteRepository.open(settings.sqlite_path())


async def open_live(
    settings: ServerSettings, durable: DriverRepository
) -> tuple[DriverRepository, LocationBus]:
    """The live-state layer and bus named by `--bus`: in-process, or Redis shared by every
    worker and replica (current state read from Redis, fan-out over pub/sub)."""
    if not settings.bus.startswith(REDIS_SCHEMES):
        return durable, MemoryBus()
    from driver_service.bus.redis import RedisBus, create_redis_client
    from driver_service.storage.live import LiveStateRepository

    client = create_redis_client(settings.bus)
    bus = RedisBus(client, prefix=REDIS_PREFIX)
    bus.start()
    # The repository closes the shared client last (DriverTracking closes the bus first).
    live = LiveStateRepository(durable, client, prefix=REDIS_PREFIX, close_client=True)
    return live, bus


async def build_tracking(
    settings: ServerSettings, metrics: ServiceMetrics | None = None
) -> DriverTracking:
    """The application service over the configured adapters, instrumented when `metrics`
    is given (the server always gives it; tests may leave it out)."""
    durable = await open_store(settings)
    try:
        repository, bus = await open_live(settings, durable)
    except BaseException:
        await durable.close()
        raise
    limiter = (
        RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
    )
    if metrics is None:
        tracking = DriverTracking(repository, bus, rate_limiter=limiter)
    else:
        rejected = {
            "invalid": metrics.rejected_invalid,
            "rate_limited": metrics.rejected_rate_limited,
        }
        tracking = DriverTracking(
            InstrumentedRepository(repository, metrics),
            InstrumentedBus(bus, metrics),
            rate_limiter=limiter,
            count_rejection=lambda reason: rejected[reason].inc(),
        )
        metrics.count_sessions(lambda: tracking.session_count)
    await tracking.start()
    return tracking
