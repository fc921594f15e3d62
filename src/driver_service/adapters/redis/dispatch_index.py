"""DriverIndex on Redis GEO, shared by every replica: GEOSEARCH picks candidates, and the
exact great-circle distance (from exact coordinates kept beside them) decides.

Keys (under one prefix):
  `{p}dx`     hash driver id -> "STATUS LAT LON LAST_SEEN_NS LOCATION_NS" (exact decimals)
  `{p}geo`    GEO set of searchable drivers with |latitude| <= 85.05112878
  `{p}polar`  set of searchable drivers beyond that (Redis GEO cannot store them)
  `{p}seen`   sorted set of searchable drivers by last-seen seconds (sweeps, stale count)
  `{p}gone`   sorted set of drivers that went OFFLINE, by last-seen seconds: a rebuild that
              read a driver before it went offline must not bring it back (see `fill`)
  `{p}drvgone:{digest}`  an erased driver's fence (erasure_fence.py): no rebuild brings it
              back

Redis GEO measures on a sphere of radius 6,372,797.56 m from 52-bit geohashes (~0.6 m), so
the search radius is widened by the ratio of the radii plus a few metres, and the early stop
after `limit` drivers keeps a band of a few metres, so no exact-distance hit is lost.
Every update is one script call, merged so a location never moves back in time, whichever
replica writes last.

Every call is bounded by the guard shared with live state (`--redis-timeout`). While Redis
is down, updates are skipped (the next update of a driver repairs its entry) and searches
answer UNAVAILABLE at once.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from redis.asyncio import Redis

from driver_service.adapters.redis.connection import redis_guard
from driver_service.adapters.redis.erasure_fence import ERASURE_FENCE_S, fence_key
from driver_service.dispatch.domain.drivers import (
    DEFAULT_FORGET_AFTER_NS,
    IndexedDriver,
    NearbyDriver,
)
from driver_service.dispatch.domain.geo import EARTH_RADIUS_M, haversine_m, latitude_band
from driver_service.domain import Driver, Location, Status
from driver_service.resilience.guard import DependencyGuard

DEFAULT_PREFIX = "ds:"
#: Redis's GEO latitude limit (Web Mercator).
GEO_MAX_LAT = 85.05112878
_REDIS_RADIUS_M = 6_372_797.560856
_SCALE = _REDIS_RADIUS_M / EARTH_RADIUS_M
_SLACK_M = 5.0
#: Longitudes east of this are stored and searched as -180 (the same meridian, under 0.1 mm
#: away): Redis 7.0 stores 179.99999999999997 as 180, which no GEOSEARCH finds.
_ANTIMERIDIAN = 180.0 - 1e-9

_COMMON_LUA = """
local dx, geo, polar, seen_key, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function newer(a, b)
  if b == nil or b == '' then return true end
  if a == '' then return false end
  if #a ~= #b then return #a > #b end
  return a > b
end
local function place(id, st, lat, lon, seen)
  if st == 'OFFLINE' or lat == '' then
    redis.call('ZREM', geo, id); redis.call('SREM', polar, id); redis.call('ZREM', seen_key, id)
    return
  end
  if math.abs(tonumber(lat)) <= MAXLAT then
    -- GEO does not wrap +180 to -180 (the same meridian), and a longitude within a hair of
    -- +180 is stored as 180 and never found again (Redis 7.0): store all of them as -180.
    if tonumber(lon) > ANTIMERIDIAN then lon = '-180' end
    redis.call('GEOADD', geo, lon, lat, id); redis.call('SREM', polar, id)
  else
    redis.call('ZREM', geo, id); redis.call('SADD', polar, id)
  end
  redis.call('ZADD', seen_key, tonumber(seen) / 1e9, id)
end
local function store(id, st, lat, lon, seen, at)
  if st == 'OFFLINE' then
    redis.call('HDEL', dx, id); redis.call('ZADD', gone, tonumber(seen) / 1e9, id)
  else
    redis.call('HSET', dx, id, st .. ' ' .. lat .. ' ' .. lon .. ' ' .. seen .. ' ' .. at)
    redis.call('ZREM', gone, id)
  end
  place(id, st, lat, lon, seen)
end
local function parse(v)
  return string.match(v, '^(%u+) (%S*) (%S*) (%d+) (%d*)$')
end
""".replace("MAXLAT", repr(GEO_MAX_LAT)).replace("ANTIMERIDIAN", repr(_ANTIMERIDIAN))

# ARGV: groups of (id, lat, lon, recorded_at_ns). Returns the ids the index does not know.
_MOVE_LUA = (
    _COMMON_LUA
    + """
local unknown = {}
for i = 1, #ARGV, 4 do
  local id, lat, lon, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local v = redis.call('HGET', dx, id)
  if not v then
    table.insert(unknown, id)
  else
    local st, _, _, seen, old_at = parse(v)
    if newer(at, old_at) then
      if newer(at, seen) then seen = at end
      redis.call('HSET', dx, id, st .. ' ' .. lat .. ' ' .. lon .. ' ' .. seen .. ' ' .. at)
      place(id, st, lat, lon, seen)
    end
  end
end
return unknown
"""
)

# ARGV: mode, then groups of (id, status, lat, lon, last_seen_ns, location_ns); '' for no
# location. Location and last-seen merge forward in both modes.
#   'put':  the status given replaces the entry's (a committed change, or a driver read from
#           the store after its newest event).
#   'fill': drivers a rebuild read from the store, racing live updates: the status is taken
#           only if the store saw a newer event than the entry; a driver without an entry is
#           added unless it went OFFLINE at or after the read (`gone`; seconds as doubles are
#           monotonic in the nanoseconds, so a near tie errs on leaving it out). KEYS[6...]:
#           each driver's erasure fence (erasure_fence.py): a driver erased since is left out.
_PUT_LUA = (
    _COMMON_LUA
    + """
local fill = ARGV[1] == 'fill'
for i = 2, #ARGV, 6 do
  local id, st, lat, lon, seen, at = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local keep = not (fill and redis.call('EXISTS', KEYS[6 + (i - 2) / 6]) == 1)
  local v = keep and redis.call('HGET', dx, id)
  if v then
    local ost, olat, olon, oseen, oat = parse(v)
    if not newer(at, oat) then lat, lon, at = olat, olon, oat end
    if not newer(seen, oseen) then
      seen = oseen
      if fill then st = ost end
    end
  elseif keep and fill then
    local g = redis.call('ZSCORE', gone, id)
    if st == 'OFFLINE' or (g and tonumber(seen) / 1e9 <= tonumber(g)) then keep = false end
  end
  if keep then store(id, st, lat, lon, seen, at) end
end
return 0
"""
)

# ARGV: lon, lat, search radius (Redis metres), seen_after_ns, statuses ("AVAILABLE,BUSY"),
# limit (0: no early stop), band (m), include polar (0/1), from_geo (0/1).
# Returns flat [id, packed value, ...] of candidates with a wanted status and fresh enough.
_NEARBY_LUA = (
    _COMMON_LUA
    + """
local lon, lat, r, cutoff = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wanted = {}
for s in string.gmatch(ARGV[5], '[^,]+') do wanted[s] = true end
local limit, band = tonumber(ARGV[6]), tonumber(ARGV[7])
local out, n, stop = {}, 0, nil
local function consider(id)
  local v = redis.call('HGET', dx, id)
  if not v then return false end
  local st, _, _, seen = parse(v)
  if wanted[st] and not newer(cutoff, seen) then
    table.insert(out, id); table.insert(out, v); return true
  end
  return false
end
if ARGV[9] == '1' then
  local found = redis.call('GEOSEARCH', geo, 'FROMLONLAT', lon, lat, 'BYRADIUS', r, 'm',
                           'ASC', 'WITHDIST')
  for _, hit in ipairs(found) do
    local d = tonumber(hit[2])
    if stop and d > stop then break end
    if consider(hit[1]) then
      n = n + 1
      if limit > 0 and n == limit then stop = d + band end
    end
  end
end
if ARGV[8] == '1' then
  for _, id in ipairs(redis.call('SMEMBERS', polar)) do consider(id) end
end
return out
"""
)

# ARGV: stale_before seconds, forget_before seconds. Forgets drivers stale since before
# forget_before; takes the other stale ones out of the search sets; returns how many remain.
_SWEEP_LUA = (
    _COMMON_LUA
    + """
local old = redis.call('ZRANGEBYSCORE', seen_key, '-inf', '(' .. ARGV[2], 'LIMIT', 0, 5000)
for i = 1, #old, 500 do
  local chunk = {unpack(old, i, math.min(i + 499, #old))}
  redis.call('HDEL', dx, unpack(chunk)); redis.call('ZREM', seen_key, unpack(chunk))
  redis.call('ZREM', geo, unpack(chunk)); redis.call('SREM', polar, unpack(chunk))
end
redis.call('ZREMRANGEBYSCORE', gone, '-inf', '(' .. ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', seen_key, '-inf', '(' .. ARGV[1])
for i = 1, #ids, 500 do
  local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
  redis.call('ZREM', geo, unpack(chunk)); redis.call('SREM', polar, unpack(chunk))
end
return #ids
"""
)


def _decode(driver_id: str, packed: str) -> IndexedDriver:
    status, lat, lon, seen, _ = packed.split(" ")
    if not lat:
        return IndexedDriver(driver_id, Status(status), 0.0, 0.0, int(seen))
    return IndexedDriver(driver_id, Status(status), float(lat), float(lon), int(seen))


def _driver_args(mode: str, drivers: Sequence[Driver]) -> list[str]:
    """Script arguments: the mode, then (id, status, lat, lon, last_seen_ns, location_ns)
    per driver."""
    args = [mode]
    for d in drivers:
        loc = d.location
        if loc is None:
            args += [d.driver_id, d.status.value, "", "", str(d.last_seen_at_ns), ""]
        else:
            args += [
                d.driver_id,
                d.status.value,
                repr(loc.latitude),
                repr(loc.longitude),
                str(d.last_seen_at_ns),
                str(loc.recorded_at_ns),
            ]
    return args


# Erase one driver from every key of the index and put up its fence (KEYS[6], for ARGV[2]
# seconds: a rebuild's fill then leaves it out); returns how many keys held it.
_FORGET_LUA = """
local n = 0
n = n + redis.call('HDEL', KEYS[1], ARGV[1])
n = n + redis.call('ZREM', KEYS[2], ARGV[1])
n = n + redis.call('SREM', KEYS[3], ARGV[1])
n = n + redis.call('ZREM', KEYS[4], ARGV[1])
n = n + redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('SET', KEYS[6], '1', 'EX', ARGV[2])
return n
"""


class RedisDriverIndex:
    """DriverIndex over Redis GEO for the Redis deployment (replicas share one index)."""

    def __init__(
        self,
        client: Redis,
        prefix: str = DEFAULT_PREFIX,
        forget_after_ns: int = DEFAULT_FORGET_AFTER_NS,
        *,
        guard: DependencyGuard | None = None,
    ) -> None:
        self._client = client
        self._guard = redis_guard(client) if guard is None else guard
        self._forget_after_ns = forget_after_ns
        self._prefix = prefix
        self._keys = [
            f"{prefix}dx",
            f"{prefix}geo",
            f"{prefix}polar",
            f"{prefix}seen",
            f"{prefix}gone",
        ]
        self._move = client.register_script(_MOVE_LUA)
        self._put = client.register_script(_PUT_LUA)
        self._nearby = client.register_script(_NEARBY_LUA)
        self._sweep = client.register_script(_SWEEP_LUA)
        self._forget = client.register_script(_FORGET_LUA)

    async def put(self, drivers: Sequence[Driver]) -> None:
        if drivers and self._guard.up:
            async with self._guard.bounded():
                await self._put(keys=self._keys, args=_driver_args("put", drivers))

    async def fill(self, drivers: Sequence[Driver]) -> None:
        if drivers:
            fences = [fence_key(self._prefix, d.driver_id) for d in drivers]
            async with self._guard.bounded():
                await self._put(keys=[*self._keys, *fences], args=_driver_args("fill", drivers))

    async def move(self, locations: Sequence[Location]) -> list[str]:
        args: list[str] = []
        for loc in locations:
            args += [
                loc.driver_id,
                repr(loc.latitude),
                repr(loc.longitude),
                str(loc.recorded_at_ns),
            ]
        if not args or not self._guard.up:
            return []
        async with self._guard.bounded():
            unknown = await self._move(keys=self._keys, args=args)
        return [u.decode() if isinstance(u, bytes) else str(u) for u in unknown]

    async def nearby(
        self,
        latitude: float,
        longitude: float,
        radius_m: float,
        limit: int,
        statuses: Collection[Status],
        seen_after_ns: int,
    ) -> list[NearbyDriver]:
        south, north, _ = latitude_band(latitude, radius_m)
        include_polar = north > GEO_MAX_LAT or south < -GEO_MAX_LAT
        from_geo = south <= GEO_MAX_LAT and north >= -GEO_MAX_LAT
        centre_lat, reach_m, early_stop = latitude, radius_m, limit
        if abs(latitude) > GEO_MAX_LAT:
            # GEOSEARCH cannot start beyond its latitude limit: start at the limit, reach
            # further by the offset (triangle inequality), and rank only exactly, here.
            centre_lat = math.copysign(GEO_MAX_LAT, latitude)
            reach_m += haversine_m(latitude, longitude, centre_lat, longitude)
            early_stop = 0
        async with self._guard.bounded():
            raw = await self._nearby(
                keys=self._keys,
                args=[
                    repr(-180.0 if longitude > _ANTIMERIDIAN else longitude),  # as stored
                    repr(centre_lat),
                    repr(reach_m * _SCALE * (1 + 1e-9) + _SLACK_M),
                    str(seen_after_ns),
                    ",".join(s.value for s in statuses),
                    str(early_stop),
                    repr(_SLACK_M),
                    "1" if include_polar else "0",
                    "1" if from_geo else "0",
                ],
            )
        hits: list[tuple[float, str, IndexedDriver]] = []
        for i in range(0, len(raw), 2):
            driver_id = raw[i].decode()
            driver = _decode(driver_id, raw[i + 1].decode())
            distance = haversine_m(latitude, longitude, driver.latitude, driver.longitude)
            if distance <= radius_m:
                hits.append((distance, driver_id, driver))
        hits.sort(key=lambda h: (h[0], h[1]))
        return [NearbyDriver(driver, distance) for distance, _, driver in hits[:limit]]

    async def get(self, driver_id: str) -> IndexedDriver | None:
        async with self._guard.bounded():
            packed = await self._client.hget(self._keys[0], driver_id)
        if packed is None:
            return None
        text = packed.decode() if isinstance(packed, bytes) else str(packed)
        return _decode(driver_id, text)

    async def sweep(self, stale_before_ns: int) -> int:
        forget_before_ns = stale_before_ns - self._forget_after_ns
        async with self._guard.bounded():
            count = await self._sweep(
                keys=self._keys, args=[repr(stale_before_ns / 1e9), repr(forget_before_ns / 1e9)]
            )
        return int(count)

    async def forget(self, driver_id: str) -> int:
        """One script over every key (the entry, GEO or polar set, seen and gone): the
        driver is in none of them afterwards. Returns how many keys held it."""
        keys = [*self._keys, fence_key(self._prefix, driver_id)]
        async with self._guard.bounded():
            return int(await self._forget(keys=keys, args=[driver_id, ERASURE_FENCE_S]))

    async def close(self) -> None:
        """The client belongs to the composition root, which closes it."""
