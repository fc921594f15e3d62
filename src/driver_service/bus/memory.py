"""In-process LocationBus: fan-out to watchers in this process only (the embedded default)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from driver_service.domain import Location
from driver_service.ports import SubscriptionClosed

DEFAULT_QUEUE_SIZE = 8


class MemorySubscription:
    """A bounded queue that drops the oldest location when full, so a slow watcher
    coalesces towards the newest position instead of slowing the publisher."""

    __slots__ = ("_bus", "_closed", "_queue", "_waiter", "driver_id")

    def __init__(self, bus: MemoryBus, driver_id: str, maxsize: int) -> None:
        self._bus = bus
        self.driver_id = driver_id
        self._queue: deque[Location] = deque(maxlen=maxsize)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def push(self, location: Location) -> None:
        self._queue.append(location)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Location:
        while not self._queue:
            if self._closed:
                raise SubscriptionClosed(self.driver_id)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._bus.unsubscribe(self)
            self._wake()


class MemoryBus:
    """LocationBus for one process; fan-out costs one deque append per watcher."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._watchers: dict[str, set[MemorySubscription]] = {}

    async def publish(self, locations: Sequence[Location]) -> None:
        watchers = self._watchers
        for location in locations:
            subs = watchers.get(location.driver_id)
            if subs:
                for sub in subs:
                    sub.push(location)

    async def subscribe(self, driver_id: str) -> MemorySubscription:
        sub = MemorySubscription(self, driver_id, self._queue_size)
        self._watchers.setdefault(driver_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: MemorySubscription) -> None:
        subs = self._watchers.get(sub.driver_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._watchers[sub.driver_id]

    async def ping(self) -> None:
        """In-process fan-out cannot be unreachable."""

    def watcher_count(self) -> int:
        return sum(len(s) for s in self._watchers.values())

    async def close(self) -> None:
        for subs in list(self._watchers.values()):
            for sub in list(subs):
                sub.close()
