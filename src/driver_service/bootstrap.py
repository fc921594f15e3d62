"""The composition root: builds the adapters chosen by configuration and wires the service."""

from __future__ import annotations

from driver_service.bus import MemoryBus
from driver_service.config import ServerSettings
from driver_service.service import DriverTracking
from driver_service.storage import SqliteRepository


async def build_tracking(settings: ServerSettings) -> DriverTracking:
    repository = await SqliteRepository.open(settings.sqlite_path())
    tracking = DriverTracking(repository, MemoryBus())
    await tracking.start()
    return tracking
