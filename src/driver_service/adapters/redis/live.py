"""Live driver state in Redis in front of a durable DriverRepository, shared by every replica.

Writes go to the durable repository FIRST, so nothing is acknowledged that is not durable;
then each changed driver's current state is merged into the hash `{prefix}drv:{id}` by a Lua
script that never moves the location back in time, whichever replica writes last. The same
script publishes each change (a growing version and the whole new state) on the channel named
like the key, which keeps every process's read cache current (`read_cache.py`, on with
`use_cache`). Reads not answered by that cache are one HGETALL (no database round trip); a
missing key or an unreachable Redis falls back to the durable repository (and back-fills
Redis, unless a key was deleted meanwhile), and a down database still answers from Redis.

A Redis write that fails after the durable commit does not fail the commit: the driver is
marked dirty, read from the durable store meanwhile, and its key is deleted once Redis
answers again (the next read back-fills it), so Redis never serves a state it missed.

Every Redis operation is bounded by the shared guard (`--redis-timeout`): a Redis that hangs
costs the commit path and a read that bound once; then both skip Redis (reads go to the
durable store, writes mark drivers dirty) while the guard's background PING finds out when
it answers again; the stale keys are deleted before Redis is used again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, cast

from redis.asyncio import Redis

from driver_service.adapters.redis.connection import redis_guard
from driver_service.adapters.redis.erasure_fence import ERASURE_FENCE_S, fence_key
from driver_service.adapters.redis.read_cache import DROPPED, DriverReadCache
from driver_service.domain import Driver, Location, Status, new_driver, new_location
from driver_service.ports import DriverRepository, Recorded
from driver_service.resilience.guard import DependencyGuard, DependencyUnavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "ds:"
#: A driver's live key expires after this long without events; a later read back-fills it.
DEFAULT_TTL_S = 7 * 24 * 3600

# KEYS[1]: the driver's hash.
# ARGV: mode, status, last_seen_at_ns, lat, lon, speed, heading, location_at_ns, ttl_s.
#   mode "loc":    merge location and last_seen; a missing key returns 0 (caller back-fills,
#                  because only the durable store knows the status of a driver Redis lost).
#   mode "status": set status (last writer wins, as in the durable store), merge the rest.
#   mode "fill":   create the key from a durable read; an existing key only merges.
# Nanosecond times exceed a double's 53 bits, so they are compared as decimal strings.
_MERGE_LUA = """
local key = KEYS[1]
local mode, status, seen, at = ARGV[1], ARGV[2], ARGV[3], ARGV[8]
local function newer(a, b)
  if not b then return true end
  if #a ~= #b then return #a > #b end
  return a > b
end
local changed = false
if redis.call('EXISTS', key) == 0 then
  if mode == 'loc' then return 0 end
  redis.call('HSET', key, 'status', status, 'last_seen_at_ns', seen)
  if at ~= '' then
    redis.call('HSET', key, 'lat', ARGV[4], 'lon', ARGV[5], 'speed', ARGV[6],
               'heading', ARGV[7], 'location_at_ns', at)
  end
  changed = true
else
  if mode == 'status' and redis.call('HGET', key, 'status') ~= status then
    redis.call('HSET', key, 'status', status)
    changed = true
  end
  if newer(seen, redis.call('HGET', key, 'last_seen_at_ns')) then
    redis.call('HSET', key, 'last_seen_at_ns', seen)
    changed = true
  end
  if at ~= '' and newer(at, redis.call('HGET', key, 'location_at_ns')) then
    redis.call('HSET', key, 'lat', ARGV[4], 'lon', ARGV[5], 'speed', ARGV[6],
               'heading', ARGV[7], 'location_at_ns', at)
    changed = true
  end
end
local state
if changed then
  -- A new version (microseconds of Redis's clock, or one past the last: it never goes
  -- back, even over a key that expired and was made again), then the whole new state on
  -- the channel named like the key: in the order of the writes, to every read cache.
  local t = redis.call('TIME')
  local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', key, 'v') or '0')
  if v <= last then v = last + 1 end
  v = string.format('%.0f', v)
  redis.call('HSET', key, 'v', v)
  local f = redis.call('HMGET', key, 'status', 'last_seen_at_ns', 'lat', 'lon', 'speed',
                       'heading', 'location_at_ns')
  state = v .. ' ' .. f[1] .. ' ' .. f[2]
  if f[7] then
    state = state .. ' ' .. f[3] .. ' ' .. f[4] .. ' ' .. f[5] .. ' ' .. f[6] .. ' ' .. f[7]
  end
  redis.call('PUBLISH', key, state)
end
local ttl = tonumber(ARGV[9])
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
if changed then return state end
return 1
"""

# Deletes keys (an erasure, keys that missed a write) and tells every read cache on the
# channel named like each key ("-": drop it; the next read goes to Redis or the store).
# KEYS[1] counts these deletions (_BACKFILL_LUA), the rest are the keys.
_DROP_LUA = """
redis.call('INCR', KEYS[1])
local n = 0
for i = 2, #KEYS do
  n = n + redis.call('DEL', KEYS[i])
  redis.call('PUBLISH', KEYS[i], '-')
end
return n
"""

# A read's back-fill of a missing key from the durable store ('fill'), unless a key was
# deleted since the read began (KEYS[2], the deletion count, is no longer ARGV[10]): its
# store read may predate what the deletion stands for (an erasure not yet committed in the
# store, a write Redis missed), and would bring it back until the key's TTL.
_BACKFILL_LUA = (
    """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[10] then return -1 end
"""
    + _MERGE_LUA
)

# The same merge for many keys in one command (a rebuild's page; one command instead of one
# per key costs the client ~10x less CPU per driver): _MERGE_LUA's text runs as a function
# whose KEYS and ARGV are one key and its nine arguments. KEYS: the n drivers' hashes, then
# their n erasure fences: a driver erased since the page was read is left out
# (erasure_fence.py).
_MERGE_MANY_LUA = f"""
local all_keys, all_args = KEYS, ARGV
local n = #all_keys / 2
local function merge_one(KEYS, ARGV)
{_MERGE_LUA}
end
for i = 1, n do
  if redis.call('EXISTS', all_keys[n + i]) == 0 then
    merge_one({{all_keys[i]}}, {{unpack(all_args, i * 9 - 8, i * 9)}})
  end
end
return n
"""


_Mode = Literal["loc", "status", "fill"]


def _merge_args(
    mode: _Mode, status: str, last_seen_at_ns: int, location: Location | None, ttl_s: int
) -> list[str | int | float]:
    if location is None:
        return [mode, status, last_seen_at_ns, "", "", "", "", "", ttl_s]
    return [
        mode,
        status,
        last_seen_at_ns,
        repr(location.latitude),  # repr: the shortest text that reads back the same double
        repr(location.longitude),
        repr(location.speed_mps),
        repr(location.heading_degrees),
        location.recorded_at_ns,
        ttl_s,
    ]


def _nothing_cached(driver_id: str) -> Driver | None:
    return None


def _driver_from_hash(driver_id: str, fields: dict[bytes, bytes]) -> Driver | None:
    """The driver in a live hash, or None if the hash is not one we wrote completely."""
    try:
        status = Status(fields[b"status"].decode())
        last_seen = int(fields[b"last_seen_at_ns"])
        at_ns = fields.get(b"location_at_ns")
        location = None
        if at_ns is not None:
            location = new_location(
                driver_id,
                float(fields[b"lat"]),
                float(fields[b"lon"]),
                float(fields[b"speed"]),
                float(fields[b"heading"]),
                int(at_ns),
            )
    except (KeyError, ValueError):
        return None
    return new_driver(driver_id, status, location, last_seen)


class LiveStateRepository:
    """DriverRepository decorator: durable writes first, current state shared through Redis."""

    def __init__(
        self,
        durable: DriverRepository,
        redis: Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        close_client: bool = False,
        guard: DependencyGuard | None = None,
    ) -> None:
        """`guard`: the one shared with the bus and dispatch (the composition root passes it); by
        default a guard of this repository alone."""
        self.durable = durable
        self._redis = redis
        self._key_prefix = f"{prefix}drv:"
        self._ttl_s = ttl_s
        self._merge = redis.register_script(_MERGE_LUA)
        self._merge_many = redis.register_script(_MERGE_MANY_LUA)
        self._drop = redis.register_script(_DROP_LUA)
        self._backfill = redis.register_script(_BACKFILL_LUA)
        self._drops_key = f"{prefix}drvdrops"
        self._prefix = prefix
        self._cache: DriverReadCache | None = None
        self._close_client = close_client
        #: Bounds every Redis call; while it is down, Redis is skipped instead of paying a
        #: timeout per call, and its probe tells when to use Redis again.
        self.guard = redis_guard(redis) if guard is None else guard
        self.guard.on_recover.append(self._drop_dirty_keys)
        # Drivers whose live key may be behind the durable store (a write to Redis failed).
        self._dirty: set[str] = set()

    def key(self, driver_id: str) -> str:
        return self._key_prefix + driver_id

    # --- reads -------------------------------------------------------------------------------
    def use_cache(self, cache: DriverReadCache) -> None:
        """Answer reads from `cache` where it is fresh (`read_cache.py`), filling it on a miss."""
        self._cache = cache

    @property
    def cache(self) -> DriverReadCache | None:
        """The read cache in use, if any (its figures are exported as metrics)."""
        return self._cache

    @property
    def current_driver(self) -> Callable[[str], Driver | None]:
        """The driver from the read cache without a wait, if it holds it fresh; else None
        (GetDriver's no-wait path: the cache's own method, no call in between)."""
        cache = self._cache
        return _nothing_cached if cache is None else cache.peek

    async def get_driver(self, driver_id: str) -> Driver | None:
        cache = self._cache
        if cache is None:
            return (await self._read(driver_id))[0]
        driver = cache.peek(driver_id)
        if driver is not None:
            return driver
        return await cache.read_through(driver_id, self._read)

    async def _read(self, driver_id: str) -> tuple[Driver | None, int]:
        """The driver, and the version of the live hash it was read from (0: the durable
        store answered)."""
        if self.guard.up and driver_id not in self._dirty:
            try:
                async with self.guard.bounded():
                    # The client must use bytes responses (decode_responses=False, the default).
                    fields = cast(
                        "dict[bytes, bytes]", await self._redis.hgetall(self.key(driver_id))
                    )
                    drops = None
                    if not fields:  # counted before the store is read (_BACKFILL_LUA)
                        drops = cast("bytes | None", await self._redis.get(self._drops_key))
            except DependencyUnavailable:
                pass  # logged by the guard; the durable store answers
            else:
                driver = _driver_from_hash(driver_id, fields) if fields else None
                if driver is not None:
                    return driver, int(fields.get(b"v", b"0"))
                driver = await self.durable.get_driver(driver_id)
                if driver is not None:
                    await self._fill_missing(driver, drops)
                return driver, 0
        return await self.durable.get_driver(driver_id), 0

    async def _fill_missing(self, driver: Driver, drops: bytes | None) -> None:
        """Back-fill a key a read found missing with what the store answered, unless a key
        was deleted since (`_BACKFILL_LUA`); never raises (the read stands)."""
        args = _merge_args(
            "fill", driver.status, driver.last_seen_at_ns, driver.location, self._ttl_s
        )
        args.append((drops or b"0").decode())
        try:
            async with self.guard.bounded():
                keys = [self.key(driver.driver_id), self._drops_key]
                result = await self._backfill(keys=keys, args=args)
        except DependencyUnavailable:
            self._dirty.add(driver.driver_id)
        else:
            self._tell_cache([driver.driver_id], [result])

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        return await self.durable.location_history(driver_id, start_ns, end_ns, limit)

    def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        return self.durable.drivers_seen_since(seen_since_ns, page_size)

    async def list_drivers(self, after_id: str, limit: int) -> list[Driver]:
        return await self.durable.list_drivers(after_id, limit)

    # --- writes ------------------------------------------------------------------------------
    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        advanced = await self.durable.record_locations(locations)
        if advanced:
            newest: dict[str, Location] = {}
            for location in advanced:  # ascending per driver: the last one is the newest
                newest[location.driver_id] = location
            await self._write_live(
                [(driver_id, "loc", "", loc) for driver_id, loc in newest.items()]
            )
        return advanced

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        driver = await self.durable.set_status(driver_id, status, at_ns)
        await self._write_live([(driver_id, "status", driver.status, driver)])
        return driver

    async def _write_live(
        self, updates: Sequence[tuple[str, _Mode, str, Location | Driver]]
    ) -> None:
        """Merge updates into Redis in one round trip; never raises (the durable write stands)."""
        if not self.guard.up:
            self._dirty.update(driver_id for driver_id, *_ in updates)
            return
        try:
            async with self.guard.bounded(), self._redis.pipeline(transaction=False) as pipe:
                for driver_id, mode, status, item in updates:
                    if isinstance(item, Driver):
                        args = _merge_args(
                            mode, status, item.last_seen_at_ns, item.location, self._ttl_s
                        )
                    else:
                        args = _merge_args(mode, status, item.recorded_at_ns, item, self._ttl_s)
                    await self._merge(keys=[self.key(driver_id)], args=args, client=pipe)
                results = await pipe.execute()
            self._tell_cache([u[0] for u in updates], results)
            # Keys Redis lost (restart, expiry): rebuild them from the durable store, which
            # alone knows those drivers' status.
            missing = [u[0] for u, res in zip(updates, results, strict=True) if res == 0]
            if missing:
                # Outside the Redis bound: the durable reads have a bound of their own.
                fills: list[tuple[str, _Mode, str, Driver]] = []
                for driver_id in missing:
                    driver = await self.durable.get_driver(driver_id)
                    if driver is not None:
                        fills.append((driver_id, "fill", driver.status, driver))
                async with self.guard.bounded(), self._redis.pipeline(transaction=False) as pipe:
                    for driver_id, mode, status, driver in fills:
                        args = _merge_args(
                            mode, status, driver.last_seen_at_ns, driver.location, self._ttl_s
                        )
                        await self._merge(keys=[self.key(driver_id)], args=args, client=pipe)
                    self._tell_cache([f[0] for f in fills], await pipe.execute())
        except DependencyUnavailable:
            self._dirty.update(driver_id for driver_id, *_ in updates)

    def _tell_cache(self, driver_ids: Sequence[str], results: list[Any]) -> None:
        """This process's own writes reach its read cache at once, not a pub/sub trip later:
        a caller reads what it wrote on the same process. (The states are the ones the
        script published; the cache keeps only newer versions, so order does not matter.)"""
        cache = self._cache
        if cache is not None:
            for driver_id, result in zip(driver_ids, results, strict=True):
                if isinstance(result, bytes):
                    cache.apply(driver_id, result)

    async def fill(self, drivers: Sequence[Driver]) -> None:
        """Merge drivers a rebuild read from the durable store into Redis in one command
        ('fill': a key that exists keeps its status and only moves forward, so an update
        that raced the read is never overwritten; a driver erased since is left out). Raises
        RedisError: the rebuild retries."""
        if not drivers:
            return
        args: list[str | int | float] = []
        for d in drivers:
            args += _merge_args("fill", d.status, d.last_seen_at_ns, d.location, self._ttl_s)
        keys = [self.key(d.driver_id) for d in drivers]
        keys += [fence_key(self._prefix, d.driver_id) for d in drivers]
        async with self.guard.bounded():
            await self._merge_many(keys=keys, args=args)

    async def forget(self, driver_id: str) -> int:
        """Delete the driver's live hash (erasure) and put up its fence (erasure_fence.py:
        a rebuild page read from the store before the erasure must not bring it back).
        Returns how many keys held it. Raises DependencyUnavailable while Redis is down: an
        erasure must not pass half done."""
        self._dirty.discard(driver_id)
        async with self.guard.bounded():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(fence_key(self._prefix, driver_id), b"1", ex=ERASURE_FENCE_S)
                await self._drop(keys=[self._drops_key, self.key(driver_id)], client=pipe)
                _, dropped = await pipe.execute()
            deleted = int(dropped)
        if self._cache is not None:
            self._cache.apply(driver_id, DROPPED)
        return deleted

    # --- Redis availability ------------------------------------------------------------------
    async def _drop_dirty_keys(self) -> None:
        """Before Redis is used again (a recovery hook of the guard): delete the keys that
        missed a write, so they refill from the durable store on their next read. Writes
        that fail meanwhile add to the set: repeat until it is empty."""
        dropped = 0
        while self._dirty:
            dirty = list(self._dirty)
            async with asyncio.timeout(self.guard.timeout_s):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for start in range(0, len(dirty), 1000):
                        keys = [
                            self._drops_key,
                            *(self.key(d) for d in dirty[start : start + 1000]),
                        ]
                        await self._drop(keys=keys, client=pipe)
                    await pipe.execute()
            self._dirty.difference_update(dirty)
            dropped += len(dirty)
        if dropped:
            log.info("live state: dropped %d stale driver keys after a Redis outage", dropped)

    # --- lifecycle ---------------------------------------------------------------------------
    async def ping(self) -> None:
        """Raise unless both the durable store and Redis answer, each within its bound; an
        answer from Redis also ends the guard's outage."""
        await self.durable.ping()
        await self.guard.check()

    async def close(self) -> None:
        await self.guard.close()
        await self.durable.close()
        if self._close_client:
            await self._redis.aclose()
