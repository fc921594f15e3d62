"""What keeping the read cache fresh costs this process, to choose between one channel per
cached driver and one fleet-wide pattern subscription (adapters/redis/read_cache.py).

- CPU per state message received and applied (the bus reader, redis-py's parsing, the
  cache's decode and version check): what every replica pays per update of every driver it
  follows. With a fleet-wide PSUBSCRIBE it would pay it for every update of the fleet.
- CPU per first read that fills an entry (SUBSCRIBE, its confirmation, HGETALL) and per
  eviction (UNSUBSCRIBE), against a plain read (HGETALL): what per-driver channels cost.

A private redis-server; the publisher is a separate process, so only the subscriber's CPU
(`time.process_time`) is counted.

    python -m bench.read_cache_costs
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from bench.common import PYTHON
from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.adapters.redis.bus import RedisBus
from driver_service.adapters.redis.connection import create_redis_client, redis_guard
from driver_service.adapters.redis.live import LiveStateRepository
from driver_service.adapters.redis.read_cache import DriverReadCache
from driver_service.domain import Location

MESSAGES = 50_000
FILLS = 2_000
T0 = 1_717_200_000 * 10**9

_PUBLISHER = """
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
channel, n = sys.argv[2], int(sys.argv[3])
pipe = r.pipeline(transaction=False)
for i in range(n):
    pipe.publish(channel, f"{10**16 + i} AVAILABLE {sys.argv[4]} 52.5 13.4 8.5 90.0 {sys.argv[4]}")
    if i % 1000 == 999:
        pipe.execute()
pipe.execute()
"""


async def _measure(redis_url: str, store: str) -> dict[str, Any]:
    durable = await PostgresRepository.open(store)
    # Generous bounds: on a loaded machine a 0.5 s stall would count Redis as down and empty
    # the cache in the middle of the measurement.
    client = create_redis_client(redis_url, timeout_s=3.0)
    guard = redis_guard(client, 3.0)
    bus = RedisBus(client, "rcb:", guard=guard, ping_every_s=0.25, idle_ping_s=5.0)
    bus.start()
    live = LiveStateRepository(durable, client, "rcb:", close_client=True, guard=guard)
    cache = DriverReadCache(bus, guard, live.key(""), max_entries=FILLS // 2)
    live.use_cache(cache)
    try:
        for _ in range(1000):
            if bus.healthy:
                break
            await asyncio.sleep(0.01)
        ids = [f"c{n:05d}" for n in range(FILLS)]
        await live.record_locations(
            [Location(d, 52.5, 13.4, 8.5, 90.0, T0 + n) for n, d in enumerate(ids)]
        )
        # Plain reads (no cache), then first reads that fill (half of them evict another).
        live._cache = None
        started = time.process_time()
        for d in ids:
            await live.get_driver(d)
        plain_us = (time.process_time() - started) / FILLS * 1e6
        live._cache = cache
        started = time.process_time()
        for d in ids:
            await live.get_driver(d)
        fill_us = (time.process_time() - started) / FILLS * 1e6
        assert cache.fills == FILLS, cache.fills
        await asyncio.sleep(1)  # the evictions' UNSUBSCRIBEs go out

        # Messages on one cached driver's channel, published by another process.
        followed = ids[-1]
        assert live.current_driver(followed) is not None
        cpu0, wall0 = time.process_time(), time.monotonic()
        publisher = await asyncio.create_subprocess_exec(
            PYTHON, "-c", _PUBLISHER, redis_url, live.key(followed), str(MESSAGES), str(T0)
        )
        last = 10**16 + MESSAGES - 1
        while True:
            await asyncio.sleep(0.05)
            entry = cache._entries.get(followed)
            if entry is not None and entry.version == last:
                break
            if publisher.returncode not in (None, 0) or time.monotonic() - wall0 > 120:
                raise RuntimeError("the messages did not all arrive")
        message_us = (time.process_time() - cpu0) / MESSAGES * 1e6
        await publisher.wait()
        return {
            "plain_read_us": round(plain_us, 1),
            "first_read_with_subscribe_us": round(fill_us, 1),
            "message_us": round(message_us, 2),
            "messages": MESSAGES,
            "fills": FILLS,
        }
    finally:
        await bus.close()
        await live.close()


def main() -> None:
    from bench.workers import scale_out_stores

    with scale_out_stores(1) as (store, redis_url):
        result = asyncio.run(_measure(redis_url, store))
    result["loadavg"] = os.getloadavg()
    result["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
