"""The composition root: builds the adapters chosen by configuration and wires the service."""

from __future__ import annotations

from driver_service.bus import MemoryBus
from driver_service.config import ServerSettings
from driver_service.ratelimit import RateLimiter
from driver_service.service import DriverTracking
from driver_service.storage import SqliteRepository


async def build_tracking(settings: ServerSettings) -> DriverTracking:
    repository = await SqliteRepository.open(settings.sqlite_path())
    limiter = (
        RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
    )
    tracking = DriverTracking(repository, MemoryBus(), rate_limiter=limiter)
    await tracking.start()
    return tracking
