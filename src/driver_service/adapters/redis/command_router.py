"""CommandRouter on Redis: a command sent on any replica reaches the driver's session on
whichever replica holds it, and every replica reads and settles the same command state.

Keys and channels (under one prefix `p`):
  `{p}cmdh:{command_id}`  hash: d driver, o offer ("1"/"0"), p payload, s state, x expires_ns,
                          da delivered_ns, sa settled_ns; kept for ttl + retention
  `{p}cmdq:{driver_id}`   list of the driver's queued command ids, oldest first
  `{p}cmd:{driver_id}`    channel: command ids for the driver, subscribed by every replica
                          that holds a session of that driver
  `{p}offer:{command_id}` channel: the command's new state, each time it changes

Sending is one script: create the hash, append the id to the driver's queue, PUBLISH the id
on the driver's channel. A replica with a session of that driver claims it (one script:
QUEUED -> DELIVERED and out of the queue, only if not expired) and pushes it to its local
session; with nobody subscribed (PUBLISH answers 0) the command simply stays queued, and the
replica where the driver's next session binds first subscribes the channel, then claims the
whole queue. Because the command is queued before it is published and the claim is atomic,
a session binding at the same moment neither misses the command nor gets it twice.

Time-outs need no timers: a QUEUED command past its expiry reads as EXPIRED, a DELIVERED
offer past it as TIMED_OUT (settled at the expiry), and every script refuses to deliver or
accept it. Waiters (SendCommand for the delivery, GetCommandStatus wait_for_outcome) listen on
the command's outcome channel and re-read the hash when it speaks, at its expiry, and at
least every `poll_s` (a message published while the pub/sub connection was reconnecting is
lost; the poll bounds how late a waiter learns of it). Pub/sub rather than polling alone:
an answer on one replica wakes a waiter on another within a round trip, and a waiter costs
Redis nothing while nothing happens.

Timestamps are each replica's clock (like the memory book); keep replica clocks in sync.
A driver with sessions on two replicas at once gets each command on whichever claims first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from driver_service.adapters.redis.bus import ChannelSubscription, RedisBus
from driver_service.adapters.redis.connection import DEFAULT_PREFIX
from driver_service.dispatch.domain.commands import (
    FINAL_STATES,
    Command,
    CommandNotFound,
    CommandState,
    NotOfferRecipient,
    OfferNotOpen,
)
from driver_service.dispatch.offer_book import DEFAULT_RETENTION_S, MAX_QUEUED_PER_DRIVER
from driver_service.dispatch.ports import SessionHost
from driver_service.domain import InvalidInput, RateLimited, StoreUnavailable
from driver_service.resilience.guard import DependencyUnavailable
from driver_service.wire import decode_server_command, encode_server_command

log = logging.getLogger(__name__)

DEFAULT_DELIVERY_WAIT_S = 0.5
DEFAULT_POLL_S = 1.0

_BEFORE_LUA = """
local function before(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
"""

# KEYS: hash, queue. ARGV: id, driver, offer, payload, expires_ns, now_ns, keep_ms,
# max_queued, hash prefix, command channel. Returns receivers, -1 (id in use), -2 (full).
_SEND_LUA = (
    _BEFORE_LUA
    + """
local h, q, now = KEYS[1], KEYS[2], ARGV[6]
if redis.call('EXISTS', h) == 1 then return -1 end
for _, qid in ipairs(redis.call('LRANGE', q, 0, -1)) do
  local v = redis.call('HMGET', ARGV[9] .. qid, 's', 'x')
  if v[1] ~= 'QUEUED' or not before(now, v[2]) then redis.call('LREM', q, 0, qid) end
end
if redis.call('LLEN', q) >= tonumber(ARGV[8]) then return -2 end
redis.call('HSET', h, 'd', ARGV[2], 'o', ARGV[3], 'p', ARGV[4], 's', 'QUEUED',
  'x', ARGV[5], 'da', '', 'sa', '')
redis.call('PEXPIRE', h, ARGV[7])
redis.call('RPUSH', q, ARGV[1])
if redis.call('PTTL', q) < tonumber(ARGV[7]) then redis.call('PEXPIRE', q, ARGV[7]) end
return redis.call('PUBLISH', ARGV[10], ARGV[1])
"""
)

# KEYS: queue. ARGV: now_ns, hash prefix, outcome channel prefix, ids... (none: the whole
# queue). Returns id, payload pairs of the commands now DELIVERED to the caller. Their
# DELIVERED is announced by the caller once the session has them (`_announce`), not here: a
# session that ends between the claim and the push sends them back to the queue, and their
# senders, woken by the QUEUED of the requeue, never read a DELIVERED that did not happen.
_CLAIM_LUA = (
    _BEFORE_LUA
    + """
local q, now, hp, op = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local ids = {}
if #ARGV > 3 then
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('LRANGE', q, 0, -1)
end
local out = {}
for _, id in ipairs(ids) do
  local h = hp .. id
  local v = redis.call('HMGET', h, 's', 'x', 'o', 'p')
  redis.call('LREM', q, 0, id)
  if v[1] == 'QUEUED' then
    if before(now, v[2]) then
      redis.call('HSET', h, 's', 'DELIVERED', 'da', now)
      if v[3] ~= '1' then redis.call('HSET', h, 'sa', now) end
      out[#out + 1] = id
      out[#out + 1] = v[4]
    else
      redis.call('HSET', h, 's', 'EXPIRED', 'sa', v[2])
      redis.call('PUBLISH', op .. id, 'EXPIRED')
    end
  end
end
return out
"""
)

# KEYS: queue. ARGV: hash prefix, outcome channel prefix, ids... (oldest first): claimed
# commands that could not be pushed go back to the head of the queue.
_REQUEUE_LUA = """
local q, hp, op = KEYS[1], ARGV[1], ARGV[2]
for i = #ARGV, 3, -1 do
  local id = ARGV[i]
  local h = hp .. id
  if redis.call('HGET', h, 's') == 'DELIVERED' then
    redis.call('HSET', h, 's', 'QUEUED', 'da', '', 'sa', '')
    redis.call('LPUSH', q, id)
    local keep = redis.call('PTTL', h)
    if keep > 0 and redis.call('PTTL', q) < keep then redis.call('PEXPIRE', q, keep) end
    redis.call('PUBLISH', op .. id, 'QUEUED')
  end
end
return 0
"""

# KEYS: hash. ARGV: driver, wanted state, now_ns, outcome channel.
_ANSWER_LUA = (
    _BEFORE_LUA
    + """
local h = KEYS[1]
local v = redis.call('HMGET', h, 'd', 'o', 's', 'x')
if not v[1] then return {'nf'} end
if v[1] ~= ARGV[1] then return {'nr'} end
if v[2] ~= '1' then return {'no'} end
local s = v[3]
if s == ARGV[2] then return {'ok', redis.call('HGETALL', h)} end
if s == 'DELIVERED' and before(ARGV[3], v[4]) then
  redis.call('HSET', h, 's', ARGV[2], 'sa', ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[2])
  return {'ok', redis.call('HGETALL', h)}
end
if s == 'QUEUED' and not before(ARGV[3], v[4]) then
  s = 'EXPIRED'
elseif s == 'DELIVERED' then
  s = 'TIMED_OUT'
end
return {'closed', s}
"""
)


def _settled(command: Command) -> bool:
    return command.state in FINAL_STATES or (
        command.state is CommandState.DELIVERED and not command.is_offer
    )


class RedisCommandRouter:
    """CommandRouter shared by every replica on one Redis (see the module docs).

    `sessions` is this replica's DriverTracking; `bus` its RedisBus, whose one pub/sub
    connection carries the command and outcome channels; `client` the shared Redis client
    (never closed here).
    """

    def __init__(
        self,
        client: Redis,
        bus: RedisBus,
        sessions: SessionHost,
        prefix: str = DEFAULT_PREFIX,
        *,
        encode: Callable[[object], bytes] = encode_server_command,
        decode: Callable[[bytes], object] = decode_server_command,
        retention_s: float = DEFAULT_RETENTION_S,
        max_queued_per_driver: int = MAX_QUEUED_PER_DRIVER,
        delivery_wait_s: float = DEFAULT_DELIVERY_WAIT_S,
        poll_s: float = DEFAULT_POLL_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._client = client
        self._bus = bus
        # Every Redis call is bounded by the bus's guard (shared with live state): while
        # Redis is down, command calls answer UNAVAILABLE at once.
        self._guard = bus.guard
        self._sessions = sessions
        self._hash_prefix = f"{prefix}cmdh:"
        self._queue_prefix = f"{prefix}cmdq:"
        self._command_channel = f"{prefix}cmd:"
        self._outcome_channel = f"{prefix}offer:"
        self._encode = encode
        self._decode = decode
        self._retention_s = retention_s
        self._max_queued = max_queued_per_driver
        self._delivery_wait_s = delivery_wait_s
        self._poll_s = poll_s
        self._clock_ns = clock_ns
        self._send_script = client.register_script(_SEND_LUA)
        self._claim_script = client.register_script(_CLAIM_LUA)
        self._requeue_script = client.register_script(_REQUEUE_LUA)
        self._answer_script = client.register_script(_ANSWER_LUA)
        # Per driver with a session here: its command channel, what its worker must do next
        # (command ids from the channel; None = claim the whole queue / re-check the
        # session), and the worker, so one driver's commands are claimed and pushed in order.
        self._channels: dict[str, ChannelSubscription] = {}
        self._pending: dict[str, list[str | None]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # --- CommandRouter -------------------------------------------------------------------
    async def send(
        self, driver_id: str, command_id: str, payload: object, is_offer: bool, ttl_s: float
    ) -> Command:
        data = self._encode(payload)
        now = self._clock_ns()
        expires = now + int(ttl_s * 1e9)
        keep_ms = max(1, int((ttl_s + self._retention_s) * 1000))
        changed = asyncio.Event()
        try:
            # Listen before publishing, so the claim of a fast replica is not missed.
            outcome = await self._bus.subscribe_channel(
                self._outcome(command_id), lambda _: changed.set()
            )
            try:
                async with self._guard.bounded():
                    receivers = await self._send_script(
                        keys=[self._hash_key(command_id), self._queue_key(driver_id)],
                        args=[
                            command_id,
                            driver_id,
                            "1" if is_offer else "0",
                            data,
                            str(expires),
                            str(now),
                            keep_ms,
                            self._max_queued,
                            self._hash_prefix,
                            self._command_channel + driver_id,
                        ],
                    )
                if receivers == -1:
                    raise InvalidInput(f"command id {command_id!r} is already in use")
                if receivers == -2:
                    raise RateLimited(
                        f"driver {driver_id!r} already has {self._max_queued} queued commands"
                    )
                if receivers == 0:
                    return Command(command_id, driver_id, payload, is_offer, expires)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self._delivery_wait_s)
            finally:
                outcome.close()
            return await self._read(command_id)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("command store is unavailable") from exc

    async def get(self, command_id: str) -> Command:
        try:
            return await self._read(command_id)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("command store is unavailable") from exc

    async def wait(self, command_id: str, timeout_s: float | None) -> Command:
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        changed = asyncio.Event()
        try:
            outcome = await self._bus.subscribe_channel(
                self._outcome(command_id), lambda _: changed.set()
            )
            try:
                while True:
                    changed.clear()
                    command = await self._read(command_id)
                    if _settled(command):
                        return command
                    # Past its expiry the command reads as EXPIRED / TIMED_OUT: look again then.
                    step = max(0.0, (command.expires_at_ns - self._clock_ns()) / 1e9) + 0.001
                    step = min(step, self._poll_s)
                    if deadline is not None:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            return command
                        step = min(step, remaining)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), step)
            finally:
                outcome.close()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("command store is unavailable") from exc

    async def answer(self, offer_id: str, driver_id: str, accepted: bool) -> Command:
        wanted = CommandState.ACCEPTED if accepted else CommandState.DECLINED
        try:
            async with self._guard.bounded():
                reply = await self._answer_script(
                    keys=[self._hash_key(offer_id)],
                    args=[driver_id, wanted.name, str(self._clock_ns()), self._outcome(offer_id)],
                )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("command store is unavailable") from exc
        code = reply[0]
        if code == b"nf":
            raise CommandNotFound(f"command {offer_id!r} not found")
        if code == b"nr":
            raise NotOfferRecipient(f"offer {offer_id!r} was not sent to driver {driver_id!r}")
        if code == b"no":
            raise OfferNotOpen(f"command {offer_id!r} is not a ride offer")
        if code == b"closed":
            raise OfferNotOpen(f"offer {offer_id!r} is {reply[1].decode()}, not awaiting an answer")
        return self._command(offer_id, reply[1])

    async def queued(self, driver_id: str) -> int:
        try:
            async with self._guard.bounded():
                # The client answers bytes (decode_responses=False, as create_redis_client
                # makes it).
                ids = cast(
                    list[bytes], await self._client.lrange(self._queue_key(driver_id), 0, -1)
                )
                if not ids:
                    return 0
                async with self._client.pipeline(transaction=False) as pipe:
                    for command_id in ids:
                        pipe.hmget(self._hash_prefix.encode() + command_id, ["s", "x"])
                    rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("command store is unavailable") from exc
        now = self._clock_ns()
        return sum(1 for s, x in rows if s == b"QUEUED" and int(x) > now)

    async def forget(self, driver_id: str) -> int:
        """Erase the driver's queue and every command hash naming the driver (queued ones
        and those kept for their outcome): a SCAN of the command hashes (there are as many
        as commands sent within ttl + retention), then one DEL. A claim racing the erasure
        finds the hash gone and delivers nothing."""
        found: list[bytes] = []
        mine = driver_id.encode()
        try:
            cursor = 0
            while True:
                async with self._guard.bounded():  # one bound per step, not for the scan
                    cursor, keys = await self._client.scan(
                        cursor, match=self._hash_prefix + "*", count=1000
                    )
                    if keys:
                        async with self._client.pipeline(transaction=False) as pipe:
                            for key in keys:
                                pipe.hget(key, "d")
                            owners = await pipe.execute()
                        found += [
                            k
                            for k, d in zip(cast(list[bytes], keys), owners, strict=True)
                            if d == mine
                        ]
                if cursor == 0:
                    break
            async with self._guard.bounded(), self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._queue_key(driver_id))
                if found:
                    pipe.delete(*found)
                deleted = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("command store is unavailable") from exc
        return int(deleted[1]) if found else 0

    async def connected(self, driver_id: str) -> bool:
        """Whether some replica listens for the driver's commands (holds its session)."""
        try:
            async with self._guard.bounded():
                counts = await self._client.pubsub_numsub(self._command_channel + driver_id)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("command store is unavailable") from exc
        return any(count > 0 for _, count in counts)

    def on_session(self, driver_id: str) -> None:
        """A session here speaks for the driver: subscribe its channel, then claim its queue."""
        self._schedule(driver_id, None)

    def on_session_closed(self, driver_id: str) -> None:
        """Drop the driver's channel once no session here speaks for it."""
        self._schedule(driver_id, None)

    async def close(self) -> None:
        """Stop the workers and drop the command channels; the client stays open."""
        self._closed = True
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._pending.clear()

    # --- delivery on the replica that holds the session ----------------------------------
    def _schedule(self, driver_id: str, command_id: str | None) -> None:
        if self._closed:
            return
        self._pending.setdefault(driver_id, []).append(command_id)
        if driver_id not in self._workers:
            self._workers[driver_id] = asyncio.get_running_loop().create_task(
                self._work(driver_id), name=f"commands-{driver_id}"
            )

    async def _work(self, driver_id: str) -> None:
        try:
            while (batch := self._pending.pop(driver_id, None)) is not None:
                await self._handle(driver_id, batch)
        except (RedisError, OSError, DependencyUnavailable) as exc:
            # The commands stay queued in Redis: the driver's next session gets them.
            log.warning("delivering commands to driver %s failed: %s", driver_id, exc)
        except Exception:
            log.exception("delivering commands to driver %s failed", driver_id)
        finally:
            del self._workers[driver_id]
            if driver_id in self._pending and not self._closed:
                self._schedule(driver_id, None)

    async def _handle(self, driver_id: str, batch: Sequence[str | None]) -> None:
        ids = [command_id for command_id in batch if command_id is not None]
        if not self._sessions.has_session(driver_id):
            await self._nobody_here(driver_id, ids)
            return
        drain = len(ids) < len(batch)
        if drain and driver_id not in self._channels:
            # Subscribed (and confirmed) before the queue is read: a command sent meanwhile
            # is either in the queue read below or announced on the channel afterwards.
            self._channels[driver_id] = await self._bus.subscribe_channel(
                (self._command_channel + driver_id).encode(),
                lambda data: self._schedule(driver_id, data.decode()),
            )
            if not self._sessions.has_session(driver_id):
                # The session ended while the channel was confirmed: claiming now would mark
                # commands DELIVERED that only go back to the queue (the sender would read
                # DELIVERED meanwhile).
                await self._nobody_here(driver_id, ids)
                return
        async with self._guard.bounded():
            claimed = await self._claim_script(
                keys=[self._queue_key(driver_id)],
                args=[
                    str(self._clock_ns()),
                    self._hash_prefix,
                    self._outcome_channel,
                    *([] if drain else ids),
                ],
            )
        pairs = list(zip(claimed[::2], claimed[1::2], strict=True))
        for n, (_, data) in enumerate(pairs):
            if not self._sessions.push_command(driver_id, self._decode(data)):
                await self._announce(command_id for command_id, _ in pairs[:n])
                async with self._guard.bounded():
                    await self._requeue_script(
                        keys=[self._queue_key(driver_id)],
                        args=[
                            self._hash_prefix,
                            self._outcome_channel,
                            *(command_id for command_id, _ in pairs[n:]),
                        ],
                    )
                return
        await self._announce(command_id for command_id, _ in pairs)

    async def _announce(self, command_ids: Iterable[bytes | str]) -> None:
        """Tell the senders their commands reached the session (after the push, see the
        claim script)."""
        channels = [self._outcome(c.decode() if isinstance(c, bytes) else c) for c in command_ids]
        if not channels:
            return
        async with self._guard.bounded(), self._client.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.publish(channel, "DELIVERED")
            await pipe.execute()

    async def _nobody_here(self, driver_id: str, ids: Sequence[str]) -> None:
        """No session here speaks for the driver: drop its channel, and tell the senders of
        `ids` at once that their commands stay queued."""
        channel = self._channels.pop(driver_id, None)
        if channel is not None:
            channel.close()
        if ids:
            async with self._guard.bounded(), self._client.pipeline(transaction=False) as pipe:
                for command_id in ids:
                    pipe.publish(self._outcome(command_id), "QUEUED")
                await pipe.execute()

    # --- reading -------------------------------------------------------------------------
    async def _read(self, command_id: str) -> Command:
        async with self._guard.bounded():
            fields = cast(
                dict[bytes, bytes], await self._client.hgetall(self._hash_key(command_id))
            )
        if not fields:
            raise CommandNotFound(f"command {command_id!r} not found")
        return self._command(command_id, fields)

    def _command(self, command_id: str, fields: dict[bytes, bytes] | list[Any]) -> Command:
        """A Command from the hash (HGETALL as a dict, or the flat list a script returns),
        with the state it has now: past its expiry a QUEUED one is EXPIRED, a DELIVERED
        offer TIMED_OUT."""
        if isinstance(fields, list):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        is_offer = fields[b"o"] == b"1"
        expires = int(fields[b"x"])
        state = CommandState[fields[b"s"].decode()]
        delivered = int(fields[b"da"]) if fields[b"da"] else None
        settled = int(fields[b"sa"]) if fields[b"sa"] else None
        if expires <= self._clock_ns():
            if state is CommandState.QUEUED:
                state, settled = CommandState.EXPIRED, expires
            elif state is CommandState.DELIVERED and is_offer:
                state, settled = CommandState.TIMED_OUT, expires
        command = Command(
            command_id,
            fields[b"d"].decode(),
            self._decode(fields[b"p"]),
            is_offer,
            expires,
            state,
            delivered,
            settled,
        )
        if _settled(command):
            command.settled.set()
        return command

    def _hash_key(self, command_id: str) -> str:
        return self._hash_prefix + command_id

    def _queue_key(self, driver_id: str) -> str:
        return self._queue_prefix + driver_id

    def _outcome(self, command_id: str) -> bytes:
        return (self._outcome_channel + command_id).encode()
