"""A per-process cache of drivers' live state, kept fresh by Redis pub/sub: GetDriver on
PostgreSQL + Redis answers from memory, without a Redis round trip, as on SQLite.

How it stays correct:

- Every change of a driver's live hash is published, by the same Lua script and so in the
  order of the writes, on the channel named like the key (`{prefix}drv:{id}`): the whole new
  state with a version that only grows (`live.py`), or "-" when the key is deleted (an
  erasure, a key that missed a write during a Redis outage).
- A driver is cached on its first read: the channel is SUBSCRIBEd, Redis confirms it, and
  only then is the hash read, so no change slips between the read and the subscription. A
  message that arrives meanwhile is kept if its version is newer than the read's; a "-"
  keeps the read out of the cache. Afterwards a message replaces the entry only with a newer
  version: an older or repeated message never moves it back.
- An entry is served only while the bus's pub/sub connection is up, the shared guard finds
  Redis up, and Redis has answered a PING sent at most `max_stale_s` ago (`RedisBus.
  confirmed_at`): its answer proves every message published before the PING was handled.
  Otherwise reads go to Redis or the store, as without the cache. A dropped connection or a
  Redis outage seen by the guard empties the cache; reads fill it again once the channels
  are subscribed on the new connection.

Staleness bound: an entry reflects every change published in Redis up to `max_stale_s`
before it is served. Bounded to `max_entries` drivers (least recently read evicted, its
channel unsubscribed): this process receives the updates of the drivers it caches only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from driver_service.adapters.redis.bus import ChannelSubscription, RedisBus
from driver_service.domain import Driver, Status, new_driver, new_location
from driver_service.resilience.guard import DependencyGuard

#: Drivers kept per process by default (`--read-cache-size`).
DEFAULT_MAX_ENTRIES = 10_000
#: Default bound of how old what the cache serves may be (`--read-cache-staleness`).
DEFAULT_MAX_STALE_S = 1.0
#: The read of a driver's live hash: the driver and the hash's version (0: not read from a
#: hash Redis holds, e.g. the store answered; such a read is not cached).
Read = Callable[[str], Awaitable[tuple[Driver | None, int]]]

#: The message of a deleted key: drop the entry.
DROPPED = b"-"


def decode_state(driver_id: str, payload: bytes) -> tuple[Driver, int] | None:
    """A state message of the merge script, or None if it is not one (or is "-")."""
    parts = payload.split(b" ")
    try:
        version = int(parts[0])
        status = Status(parts[1].decode())
        seen = int(parts[2])
        location = None
        if len(parts) == 8:
            lat, lon, speed, heading = map(float, parts[3:7])
            location = new_location(driver_id, lat, lon, speed, heading, int(parts[7]))
        elif len(parts) != 3:
            return None
    except (IndexError, ValueError):
        return None
    return new_driver(driver_id, status, location, seen), version


class _Entry:
    __slots__ = ("driver", "subscription", "version")

    def __init__(self, driver: Driver, version: int, subscription: ChannelSubscription) -> None:
        self.driver = driver
        self.version = version
        self.subscription = subscription


class _Filling:
    """What arrived on a driver's channel while its first read was in flight."""

    __slots__ = ("driver", "dropped", "version")

    def __init__(self) -> None:
        self.driver: Driver | None = None
        self.version = 0
        self.dropped = False


class DriverReadCache:
    """Drivers' live state in memory, each entry kept current by its Redis channel."""

    def __init__(
        self,
        bus: RedisBus,
        guard: DependencyGuard,
        key_prefix: str,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_stale_s: float = DEFAULT_MAX_STALE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._guard = guard
        self._key_prefix = key_prefix
        self._max = max_entries
        self._max_stale_s = max_stale_s
        self._monotonic = monotonic
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._filling: dict[str, _Filling] = {}
        # Bumped by every clear: a first read that straddles one is not cached.
        self._generation = 0
        bus.disconnect_listeners.append(self.clear)
        guard.on_recover.append(self._recovered)
        #: First reads that filled an entry (tests, metrics).
        self.fills = 0
        #: Reads answered from an entry, and entries evicted to stay bounded (metrics).
        self.hits = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, driver_id: str) -> Driver | None:
        """The cached driver if it is fresh for sure (GetDriver's no-wait path, one call per
        RPC: kept flat), else None: then `read_through`. `confirmed_at` is -inf while the
        bus is not connected, so its age covers the connection's state too."""
        entry = self._entries.get(driver_id)
        if (
            entry is None
            or self._monotonic() - self._bus.confirmed_at > self._max_stale_s
            or not self._guard.up
        ):
            return None
        self._entries.move_to_end(driver_id)
        self.hits += 1
        return entry.driver

    @property
    def serving(self) -> bool:
        """Whether entries are served now (connected, Redis up, a PING answered within the
        bound); while not, every read goes to Redis or the store."""
        return self._fresh()

    def _fresh(self) -> bool:
        bus = self._bus
        return (
            bus.healthy
            and self._guard.up
            and self._monotonic() - bus.confirmed_at <= self._max_stale_s
        )

    async def read_through(self, driver_id: str, read: Read) -> Driver | None:
        """`read(driver_id)`, caching its answer when the driver's channel was subscribed
        and confirmed before it and nothing cleared the cache meanwhile."""
        if driver_id in self._entries or driver_id in self._filling or not self._fresh():
            return (await read(driver_id))[0]
        filling = self._filling[driver_id] = _Filling()
        generation = self._generation
        subscription: ChannelSubscription | None = None
        try:
            channel = (self._key_prefix + driver_id).encode()
            subscription = await self._bus.subscribe_channel(
                channel, lambda payload: self.apply(driver_id, payload)
            )
            confirmed = self._bus.channel_confirmed(channel)
            connection = self._bus.connects
            driver, version = await read(driver_id)
            if (
                driver is None
                or version <= 0
                or not confirmed
                or filling.dropped
                or generation != self._generation
                or connection != self._bus.connects
                or not self._fresh()
            ):
                return driver
            if filling.driver is not None and filling.version > version:
                driver, version = filling.driver, filling.version
            self._install(driver_id, _Entry(driver, version, subscription))
            subscription = None  # the entry holds it now
            return driver
        finally:
            del self._filling[driver_id]
            if subscription is not None:
                subscription.close()

    def _install(self, driver_id: str, entry: _Entry) -> None:
        self._entries[driver_id] = entry
        self.fills += 1
        while len(self._entries) > self._max:
            _, evicted = self._entries.popitem(last=False)
            evicted.subscription.close()
            self.evictions += 1

    def apply(self, driver_id: str, payload: bytes) -> None:
        """A message of a driver's channel (from the bus's reader task, or this process's
        own write as the script returned it): newer states replace the entry, "-" drops it."""
        state = None if payload == DROPPED else decode_state(driver_id, payload)
        entry = self._entries.get(driver_id)
        if entry is not None:
            if state is None:  # erased, dropped, or not understood: forget it
                del self._entries[driver_id]
                entry.subscription.close()
            elif state[1] > entry.version:
                entry.driver, entry.version = state
            return
        filling = self._filling.get(driver_id)
        if filling is not None:
            if state is None:
                filling.dropped = True
            elif state[1] > filling.version:
                filling.driver, filling.version = state

    def clear(self) -> None:
        """Forget every entry and unsubscribe their channels (the bus connection dropped,
        or Redis was down: messages may have been missed)."""
        self._generation += 1
        for filling in self._filling.values():
            filling.dropped = True
        entries, self._entries = self._entries, OrderedDict()
        for entry in entries.values():
            entry.subscription.close()

    async def _recovered(self) -> None:
        # While the guard found Redis down, this process's own writes skipped Redis and
        # were not published: nothing cached before may be trusted.
        self.clear()
