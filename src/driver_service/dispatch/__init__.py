"""Dispatch: find nearby drivers (a spatial index kept in step with accepted updates) and
push commands to their live sessions, queued while they are offline.

Across replicas (not built yet): SendCommand would PUBLISH the command to a per-driver
Redis channel `{prefix}cmd:{driver_id}` that the replica holding the session subscribes to
when the session binds; see the issue 6 report.
"""

from driver_service.dispatch.geo import EARTH_RADIUS_M, haversine_m
from driver_service.dispatch.index import (
    DriverIndex,
    IndexedDriver,
    MemoryDriverIndex,
    NearbyDriver,
)
from driver_service.dispatch.indexing import IndexingBus, IndexingRepository
from driver_service.dispatch.offers import Command, CommandState, OfferBook
from driver_service.dispatch.redis_index import RedisDriverIndex
from driver_service.dispatch.service import Dispatch, DriverView

__all__ = [
    "EARTH_RADIUS_M",
    "Command",
    "CommandState",
    "Dispatch",
    "DriverIndex",
    "DriverView",
    "IndexedDriver",
    "IndexingBus",
    "IndexingRepository",
    "MemoryDriverIndex",
    "NearbyDriver",
    "OfferBook",
    "RedisDriverIndex",
    "haversine_m",
]
