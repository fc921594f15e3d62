"""Tells every replica that a driver was erased, so that each drops the copies of the
driver's recent events its event feed keeps in memory for WatchEvents (app/events.py).

The erasure (app/history.py) publishes the driver's id on `{prefix}erasures` as one of its
steps, after the store deleted the driver's events; every replica, the one erasing
included, subscribes at start and drops them from its ring on receipt. Pub/sub delivers
only to connected subscribers: a replica whose pub/sub connection was away may have missed
an erasure, so `epoch` (the bus's connection count) moves whenever the connection was made
again, and the feed then empties its ring (its watchers read the log, which has no copies,
until newer events fill it again). Publishing goes through the shared guard: with Redis
away the erasure fails with UNAVAILABLE, as its other Redis steps do, and is retried.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from driver_service.adapters.redis.bus import RedisBus
from driver_service.resilience.guard import DependencyGuard


class ErasureBroadcast:
    """Publishes erasures to every replica and hands those received to `on_erased`."""

    def __init__(self, client: Redis, bus: RedisBus, guard: DependencyGuard, prefix: str) -> None:
        self._client = client
        self._bus = bus
        self._guard = guard
        self.channel = f"{prefix}erasures".encode()

    async def start(self, on_erased: Callable[[str], None]) -> None:
        """Subscribe for the bus's lifetime (its close ends it): from the return on, while
        connected, no erasure is missed."""
        await self._bus.subscribe_channel(self.channel, lambda payload: on_erased(payload.decode()))

    def epoch(self) -> int:
        """Moves each time the pub/sub connection is made again (erasures may be missed)."""
        return self._bus.connects

    async def publish(self, driver_id: str) -> int:
        """Tell every replica (an erasure step); returns 0: it removes nothing itself."""
        async with self._guard.bounded():
            await self._client.publish(self.channel, driver_id.encode())
        return 0
