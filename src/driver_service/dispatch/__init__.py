"""Dispatch: find nearby drivers and push commands (ride offers, navigation updates) to their
live sessions, queued while they are offline, with each command's state and outcome.

- `service.Dispatch`: the application service over two ports, `index.DriverIndex` (nearby
  search) and `offers.CommandRouter` (where commands go and where their state lives);
- the index, kept in step with accepted updates by the `indexing` decorators: in memory
  (`index.MemoryDriverIndex`) or on Redis GEO, shared by every replica (`redis_index`);
- the commands: in memory for one replica (`offers.MemoryCommandRouter` over an
  `OfferBook`) or on Redis (`redis_offers`), where a command sent on any replica reaches the
  driver's session on whichever replica holds it, through the per-driver channel
  `{prefix}cmd:{driver_id}`;
- `rebuild` and `redis_rebuild`: derived state rebuilt from the store, which stays the
  source of truth, at start and whenever Redis comes back empty.
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
