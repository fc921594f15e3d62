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
    coalesces towards the newest position instead of slowing the publisher.

    Per delivery: a deque append and pop and one future. The event loop is looked up once,
    not per wait: asyncio.get_running_loop() makes a getpid() system call on Python 3.11."""

    __slots__ = ("_bus", "_closed", "_loop", "_queue", "_waiter", "driver_id")

    def __init__(self, bus: MemoryBus, driver_id: str, maxsize: int) -> None:
        self._bus = bus
        self.driver_id = driver_id
        self._queue: deque[Location] = deque(maxlen=maxsize)
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def push(self, location: Location) -> None:
        self._queue.append(location)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Location:
        queue = self._queue
        while not queue:
            if self._closed:
                raise SubscriptionClosed(self.driver_id)
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return queue.popleft()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._bus.unsubscribe(self)
            self._wake()


class MemoryBus:
    """LocationBus for one process; fan-out costs one deque append per watcher.

    A driver's watchers are kept in subscription order (a dict as an ordered set) and woken
    in that order, not in a set's hash order: with 1,000 watchers that measured ~0.8 µs
    less server CPU per delivery (bench fanout), presumably because their streams' state
    is then visited in the order it was allocated."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._watchers: dict[str, dict[MemorySubscription, None]] = {}

    async def publish(self, locations: Sequence[Location]) -> None:
        watchers = self._watchers
        for location in locations:
            subs = watchers.get(location.driver_id)
            if subs:
                for sub in subs:
                    sub.push(location)

    async def subscribe(self, driver_id: str) -> MemorySubscription:
        sub = MemorySubscription(self, driver_id, self._queue_size)
        self._watchers.setdefault(driver_id, {})[sub] = None
        return sub

    def unsubscribe(self, sub: MemorySubscription) -> None:
        subs = self._watchers.get(sub.driver_id)
        if subs is not None:
            subs.pop(sub, None)
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
