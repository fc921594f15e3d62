"""Rebuild Redis's derived state (live hashes, the GEO index) when Redis comes back empty.

Why a marker: a restarted or failed-over Redis answers as if nothing happened, only emptier.
A successful rebuild writes `{prefix}epoch`; a check every second (one EXISTS) that finds it
missing means Redis lost its data since, whatever the cause (restart without persistence,
FLUSHALL, failover to an empty replica), so this replica rebuilds from the store.

Replicas coordinate through a short lock, `SET {prefix}rebuild:lock NX PX`, extended after
every page; the others keep checking and see the marker once the holder is done, or take the
lock over if the holder died (it expires). The marker is written only while the lock is still
ours, in one script: a Redis emptied during the rebuild has lost the lock too, so the marker
stays missing and the rebuild runs again. Merges are idempotent and never go back in time
(see rebuild.py), so overlapping rebuilds and live updates cannot corrupt each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from driver_service.dispatch.ports import DEFAULT_PAGE_SIZE, DriverSource
from driver_service.dispatch.rebuild import Fill, RebuildResult, rebuild_from_store

log = logging.getLogger(__name__)

DEFAULT_CHECK_EVERY_S = 1.0
DEFAULT_LOCK_TTL_S = 10.0

# KEYS: lock; ARGV: token, ttl ms. Extends the lock only if it is still ours.
_EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock, marker; ARGV: token, marker value. Marks the rebuild done only if the lock is
# still ours (an emptied Redis lost it), and releases it.
_FINISH_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockLost(RuntimeError):
    """Another replica holds the rebuild lock now, or Redis was emptied meanwhile."""


class RedisRebuilder:
    """Keeps Redis's derived state rebuilt: `rebuild_if_missing()` once (at start), `run()` as
    a background task until `close()`."""

    def __init__(
        self,
        client: Redis,
        repository: DriverSource,
        targets: Sequence[Fill],
        *,
        prefix: str,
        horizon_s: float,
        check_every_s: float = DEFAULT_CHECK_EVERY_S,
        lock_ttl_s: float = DEFAULT_LOCK_TTL_S,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """`horizon_s`: only drivers seen this recently are rebuilt (dispatch's stale-after:
        older drivers are never offered, and GetDriver back-fills any driver it reads)."""
        self._client = client
        self._repository = repository
        self._targets = tuple(targets)
        self.marker_key = f"{prefix}epoch"
        self.lock_key = f"{prefix}rebuild:lock"
        self._horizon_ns = int(horizon_s * 1e9)
        self._check_every_s = check_every_s
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._page_size = page_size
        self._clock_ns = clock_ns
        self._extend = client.register_script(_EXTEND_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._stopping = asyncio.Event()
        self._failing = False
        #: Rebuilds this replica completed (for tests and logs).
        self.rebuilds = 0
        self.last_result: RebuildResult | None = None

    async def rebuild_if_missing(self) -> RebuildResult | None:
        """One check: if the marker is missing and no other replica is rebuilding, rebuild
        and write the marker. None when there was nothing to do here."""
        if await self._client.exists(self.marker_key):
            return None
        token = uuid.uuid4().hex
        acquired = await self._client.set(self.lock_key, token, nx=True, px=self._lock_ttl_ms)
        if not acquired:
            return None  # another replica rebuilds; the next check sees its marker
        try:
            result = await self._rebuild_holding(token)
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self.lock_key], args=[token])
            raise
        self.rebuilds += 1
        self.last_result = result
        log.warning(
            "redis: derived state rebuilt from the store: %d drivers in %.3f s",
            result.drivers,
            result.seconds,
        )
        return result

    async def _rebuild_holding(self, token: str) -> RebuildResult:
        """The rebuild proper, while this replica holds the lock under `token`."""
        log.warning("redis: derived state missing (%s absent): rebuilding", self.marker_key)
        result = await rebuild_from_store(
            self._repository,
            self._targets,
            self._clock_ns() - self._horizon_ns,
            page_size=self._page_size,
            after_page=lambda: self._extend_lock(token),
        )
        epoch = f"{time.time_ns()} {token}"
        if not await self._finish(keys=[self.lock_key, self.marker_key], args=[token, epoch]):
            raise LockLost("lost the rebuild lock before writing the marker")
        return result

    async def _extend_lock(self, token: str) -> None:
        """After each page: keep the lock, or stop if it is gone or the service is closing."""
        if self._stopping.is_set():
            raise LockLost("rebuild stopped: the service is closing")
        if not await self._extend(keys=[self.lock_key], args=[token, self._lock_ttl_ms]):
            raise LockLost("lost the rebuild lock (Redis emptied again, or it expired)")

    async def run(self) -> None:
        """Check every `check_every_s` until `close()`; failures are logged (once per outage)
        and retried at the next check, so this only returns when closed."""
        while not self._stopping.is_set():
            try:
                await self.rebuild_if_missing()
                if self._failing:
                    log.info("redis rebuild check: working again")
                self._failing = False
            except LockLost as exc:
                log.warning("redis rebuild abandoned: %s", exc)
            except Exception as exc:  # noqa: BLE001 - any failure is retried at the next check
                if not self._failing:
                    log.warning("redis rebuild check failed (retrying each check): %r", exc)
                self._failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._check_every_s)

    def close(self) -> None:
        """Make `run()` return after its current check (a rebuild stops at its next page)."""
        self._stopping.set()
