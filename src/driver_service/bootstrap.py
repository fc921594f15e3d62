"""The composition root: builds the adapters chosen by configuration and wires the service."""

from __future__ import annotations

from driver_service.bus import MemoryBus
from driver_service.config import ServerSettings
from driver_service.metrics import InstrumentedBus, InstrumentedRepository, ServiceMetrics
from driver_service.ratelimit import RateLimiter
from driver_service.service import DriverTracking
from driver_service.storage import SqliteRepository


async def build_tracking(
    settings: ServerSettings, metrics: ServiceMetrics | None = None
) -> DriverTracking:
    """The application service over the configured adapters, instrumented when `metrics`
    is given (the server always gives it; tests may leave it out)."""
    repository = await SqliteRepository.open(settings.sqlite_path())
    bus = MemoryBus()
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
