"""Redis LocationBus: live locations fan out across processes and replicas over Redis pub/sub.

Why pub/sub and not streams: a watcher only ever wants the newest position, and what it
missed while disconnected is worthless once a newer fix exists. On (re)subscribe the service
already sends the latest known location at once from live state (`adapters/redis/live.py`, one
HGETALL), so a stream's replay would only deliver positions that are about to be superseded,
at the cost of a consumer cursor per watcher, XADD trimming and a blocking XREAD per channel
set. Pub/sub costs one PUBLISH per advanced location (pipelined per batch) and nothing for a
driver no one watches.

Each process holds ONE pub/sub connection; a reader task dispatches its messages to local
subscriptions (the same bounded, drop-oldest queues as the in-memory bus), and Redis channel
subscriptions are reference-counted per driver. When the connection drops, subscriptions stay
open (they simply receive nothing), `healthy` turns false, and the reader reconnects with
jittered backoff and resubscribes every channel. Once Redis confirms a watched channel again,
its watchers get MissedLocations and read their driver's current location anew: a driver
that stopped moving during the gap would otherwise never be sent its last position (fleet
subscriptions get it too, and a live map lists the fleet again). redis-py
may reconnect the connection by itself (its retry); that is noticed and handled the same way.
A connection that hangs instead of dropping is found by a PING that gets no PONG, and no
message either, within `idle_ping_s`; every other wait on Redis is bounded by the shared
guard's timeout.

The reader also PINGs every `ping_every_s` while messages flow, and `confirmed_at` is when
the last answered PING was sent: Redis answers a PING after every message it published to
this connection before it, so by then this process has seen every such message. The read
cache (`adapters/redis/read_cache.py`) serves only while that confirmation is recent.

Other Redis channels (dispatch's per-driver command channels and per-command outcome
channels) ride on the same connection through `subscribe_channel()`: a raw payload to a
synchronous handler, the same reference counting, confirmation and resubscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from driver_service.adapters.redis.connection import DEFAULT_PREFIX, redis_guard
from driver_service.app.fanout import (
    DEFAULT_QUEUE_SIZE,
    MemoryBus,
    MemoryFleetSubscription,
    MemorySubscription,
)
from driver_service.domain import Location, new_location
from driver_service.resilience.guard import DependencyGuard
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor

log = logging.getLogger(__name__)

# Payload: version, latitude, longitude, speed, heading (exact doubles), recorded_at_ns.
# The driver id travels in the channel name. 41 bytes, no text formatting on the hot path.
_WIRE = struct.Struct("<B4dq")
_WIRE_VERSION = 1


def encode_location(location: Location) -> bytes:
    return _WIRE.pack(
        _WIRE_VERSION,
        location.latitude,
        location.longitude,
        location.speed_mps,
        location.heading_degrees,
        location.recorded_at_ns,
    )


def decode_location(driver_id: str, payload: bytes) -> Location | None:
    """The location in `payload`, or None if it is not a format this version understands."""
    if len(payload) != _WIRE.size or payload[0] != _WIRE_VERSION:
        return None
    _, lat, lon, speed, heading, at_ns = _WIRE.unpack(payload)
    return new_location(driver_id, lat, lon, speed, heading, at_ns)


class _LocalFanout(MemoryBus):
    """The in-memory bus as this process's dispatcher; tells the Redis bus when a driver's
    last local watcher leaves, so its channel can be unsubscribed."""

    def __init__(self, owner: RedisBus, queue_size: int) -> None:
        super().__init__(queue_size)
        self._owner = owner

    def has_watchers(self, driver_id: str) -> bool:
        return driver_id in self._watchers

    def watched_drivers(self) -> list[str]:
        return list(self._watchers)

    def unsubscribe(self, sub: MemorySubscription) -> None:
        super().unsubscribe(sub)
        if sub.driver_id not in self._watchers:
            self._owner._last_watcher_left(sub.driver_id)


class ChannelSubscription:
    """One local handler of a raw Redis channel (`RedisBus.subscribe_channel`); the channel is
    unsubscribed in Redis once its last handler is closed."""

    __slots__ = ("_bus", "channel", "closed", "handler")

    def __init__(self, bus: RedisBus, channel: bytes, handler: Callable[[bytes], None]) -> None:
        self._bus = bus
        self.channel = channel
        self.handler = handler
        self.closed = False

    def close(self) -> None:
        """Stop handling messages (idempotent, synchronous: safe in `finally` blocks)."""
        if not self.closed:
            self.closed = True
            self._bus._drop_handler(self)


class RedisBus:
    """LocationBus over Redis pub/sub, shared by every process and replica on one Redis.

    `subscribe()` returns once Redis has confirmed the driver's channel (or at once while
    Redis is unreachable), so a location published after it returns is not missed.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 1.0,
        idle_ping_s: float = 1.0,
        ping_every_s: float | None = None,
        subscribe_timeout_s: float = 1.0,
        close_client: bool = False,
        guard: DependencyGuard | None = None,
        supervisor: TaskSupervisor | None = None,
    ) -> None:
        """`guard`: the one shared with live state and dispatch (the composition root passes it); by
        default a guard of this bus alone. `supervisor` runs the reader (restarted if it
        ever ends unexpectedly). `ping_every_s` (default `idle_ping_s`): the most time
        between PINGs while messages flow, i.e. how stale `confirmed_at` gets."""
        self._client = client
        #: Bounds every Redis call of this bus; publishing is skipped while it is down.
        self.guard = redis_guard(client) if guard is None else guard
        self._op_timeout_s = self.guard.timeout_s
        self._prefix = prefix
        self._channel_prefix = f"{prefix}loc:".encode()
        #: PSUBSCRIBEd while anyone here holds a fleet subscription (every location channel).
        self._fleet_pattern = self._channel_prefix + b"*"
        self._fleet: dict[MemoryFleetSubscription, None] = {}
        self._local = _LocalFanout(self, queue_size)
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._idle_ping_s = idle_ping_s
        self._ping_every_s = idle_ping_s if ping_every_s is None else ping_every_s
        self._subscribe_timeout_s = subscribe_timeout_s
        self._close_client = close_client
        self._pubsub: PubSub | None = None
        # Channels we asked Redis for on the current connection, and the confirmation each
        # is waiting for; changed only under _lock, so SUBSCRIBE and UNSUBSCRIBE of one
        # channel reach Redis in the order we decided them.
        self._subscribed: set[bytes] = set()
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        # Location channels (and the fleet pattern) resubscribed by the current connection
        # whose watchers have not yet been told that they may have missed locations.
        self._catch_up: set[bytes] = set()
        # What the current connection subscribed when it was made and Redis has not yet
        # confirmed: until it has, watchers here would miss what is published to them, so
        # health does not say SERVING (ping raises).
        self._resubscribing: set[bytes] = set()
        # Set when redis-py reconnected the pub/sub connection by itself (see
        # _remade_behind_our_back).
        self._remade_by_client = False
        # A location or fleet subscription was handed out unconfirmed (_note_if_unconfirmed).
        self._handed_out_unconfirmed = False
        # Raw (non-location) channels and their local handlers.
        self._handlers: dict[bytes, list[ChannelSubscription]] = {}
        self._lock = asyncio.Lock()
        self._healthy = False
        self._first_attempt = asyncio.Event()
        self._supervisor = supervisor or TaskSupervisor()
        self._reader: Supervised | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Successful (re)connections of the pub/sub connection, for tests and metrics.
        self.connects = 0
        #: Locations not published because Redis was down (no watcher could get them).
        self.skipped = 0
        #: Monotonic time when the last answered PING (or the current connection's
        #: subscriptions) was sent: every message Redis published to us before it is handled.
        self.confirmed_at = float("-inf")
        #: Called (synchronously, in order) each time the pub/sub connection is dropped:
        #: whatever was kept fresh by its messages may have missed some from now on.
        self.disconnect_listeners: list[Callable[[], None]] = []

    # --- LocationBus -------------------------------------------------------------------------
    async def publish(self, locations: Sequence[Location]) -> None:
        """Publish every location of the batch in one round trip (a non-transactional pipeline).

        While Redis is down the batch is skipped at once: the commit path must not wait for
        it, and watchers get newer locations once Redis is back."""
        if not locations:
            return
        if not self.guard.up:
            self.skipped += len(locations)
            return
        prefix = self._channel_prefix
        async with self.guard.bounded(), self._client.pipeline(transaction=False) as pipe:
            for location in locations:
                pipe.publish(prefix + location.driver_id.encode(), encode_location(location))
            await pipe.execute()

    async def subscribe(self, driver_id: str) -> MemorySubscription:
        if self._closed:
            sub = MemorySubscription(self._local, driver_id, 1)
            sub.close()
            return sub
        await self._started()
        sub = await self._local.subscribe(driver_id)
        try:
            channel = self._channel(driver_id)
            await self._confirmed(await self._sync_channel(channel))
            self._note_if_unconfirmed(channel)
        except BaseException:
            sub.close()  # the caller was cancelled (or failed) and never gets it to close
            raise
        return sub

    async def subscribe_fleet(self) -> MemoryFleetSubscription:
        """Every location channel through one pattern subscription (`{prefix}loc:*`), held
        while anyone here holds a fleet subscription: this process then receives the whole
        fleet's update rate, as a live fleet map needs and only while one is open."""
        sub = MemoryBus.new_fleet_subscription(
            self._fleet, lambda: self._schedule_sync(self._fleet_pattern)
        )
        if self._closed:
            sub.close()
            return sub
        await self._started()
        try:
            await self._confirmed(await self._sync_channel(self._fleet_pattern))
            self._note_if_unconfirmed(self._fleet_pattern)
        except BaseException:
            sub.close()
            raise
        return sub

    # --- raw channels ------------------------------------------------------------------------
    async def subscribe_channel(
        self, channel: bytes, handler: Callable[[bytes], None]
    ) -> ChannelSubscription:
        """Call `handler(payload)` (in the reader task: it must not block) for each message
        published on `channel` until the returned subscription is closed.

        Returns once Redis has confirmed the channel (or at once while Redis is unreachable;
        the channel is subscribed when the connection comes back), so a message published
        after it returns is not missed while the connection stays up.
        """
        if channel.startswith(self._channel_prefix):
            raise ValueError("location channels are subscribed through subscribe()")
        sub = ChannelSubscription(self, channel, handler)
        if self._closed:
            sub.closed = True
            return sub
        await self._started()
        self._handlers.setdefault(channel, []).append(sub)
        try:
            await self._confirmed(await self._sync_channel(channel))
        except BaseException:
            sub.close()  # the caller was cancelled (or failed) and never gets it to close
            raise
        return sub

    def channel_count(self) -> int:
        """Raw channels with at least one local handler (for tests and metrics)."""
        return len(self._handlers)

    def _drop_handler(self, sub: ChannelSubscription) -> None:
        handlers = self._handlers.get(sub.channel)
        if handlers is None or sub not in handlers:
            return
        handlers.remove(sub)
        if not handlers:
            del self._handlers[sub.channel]
            self._schedule_sync(sub.channel)

    async def _started(self) -> None:
        self.start()
        if not self._first_attempt.is_set():
            # Just started: give the first connection a moment rather than skip the SUBSCRIBE.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_attempt.wait(), self._subscribe_timeout_s)

    def _note_if_unconfirmed(self, channel: bytes) -> None:
        """A subscription handed out before Redis confirmed its channel (Redis unreachable,
        or slow at the first connection) may miss what is published until the reader
        subscribes it: its watchers must catch up then, even on the first connection."""
        if not self.channel_confirmed(channel):
            self._handed_out_unconfirmed = True

    async def _confirmed(self, confirmation: asyncio.Future[None] | None) -> None:
        if confirmation is not None and self._healthy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(confirmation), self._subscribe_timeout_s)

    async def close(self) -> None:
        """End every subscription (SubscriptionClosed) and the reader; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._local.close()
        for fleet in list(self._fleet):
            fleet.close()
        if self._reader is not None:
            await self._reader.stop()
        for task in self._background:
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reader = None
        await self._drop_connection()
        await self.guard.close()
        if self._close_client:
            await self._client.aclose()

    # --- health ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """True while the shared pub/sub connection is up (watchers receive live updates)."""
        return self._healthy and not self._closed

    async def ping(self) -> None:
        """Raise if Redis does not answer within the guard's timeout (for health checks); an
        answer also ends the guard's outage. Also raise while the pub/sub connection is down
        or has not yet been confirmed every subscription it was made with (once its reader has
        started): Redis answering commands is not enough for watchers here to receive what is
        published."""
        await self.guard.check()
        if self._reader is None:
            return  # publishing only: no pub/sub connection to wait for
        if not self.healthy:
            raise RedisError("the pub/sub connection is down (reconnecting)")
        if self._resubscribing:
            raise RedisError(
                f"the pub/sub connection is waiting for Redis to confirm "
                f"{len(self._resubscribing)} subscriptions"
            )

    def watcher_count(self) -> int:
        return self._local.watcher_count()

    def channel_confirmed(self, channel: bytes) -> bool:
        """True if Redis confirmed our subscription to `channel` on the current connection
        (every message published to it from then on reaches this process while connected)."""
        return self._healthy and channel in self._subscribed and channel not in self._confirmations

    # --- reader ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader (idempotent); `subscribe()` starts it too. Needs a running loop."""
        if self._reader is None and not self._closed:
            self._reader = self._supervisor.start(
                "redis-bus-reader", self._read_forever, Policy.RESTART
            )

    async def _read_forever(self) -> None:
        attempt = 0
        while True:
            try:
                try:
                    await self._connect()
                finally:
                    self._first_attempt.set()
                attempt = 0
                await self._read(self._pubsub_or_raise())
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._healthy:
                    log.warning("redis bus connection lost: %s", exc)
                elif attempt == 0:
                    log.warning("redis bus cannot connect: %s", exc)
                self._healthy = False
            await self._drop_connection()
            delay = min(self._reconnect_max_s, self._reconnect_min_s * 2**attempt)
            attempt = min(attempt + 1, 16)
            # Full jitter: replicas that lost Redis together do not reconnect in lockstep.
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def _pubsub_or_raise(self) -> PubSub:
        if self._pubsub is None:
            raise RedisError("redis bus has no pub/sub connection")
        return self._pubsub

    async def _connect(self) -> None:
        started = time.monotonic()
        async with self._lock:
            pubsub = self._client.pubsub()
            self._pubsub = pubsub
            # Raises unless Redis accepts a connection and answers the handshake in time.
            async with asyncio.timeout(self._op_timeout_s):
                await pubsub.connect()  # type: ignore[no-untyped-call]
            self._remade_by_client = False
            if pubsub.connection is not None:
                pubsub.connection.register_connect_callback(self._remade_behind_our_back)
            # No await between these two lines: a watcher added before this point is in the
            # snapshot; one added after it sees `healthy` and subscribes through the lock.
            self._healthy = True
            channels = [self._channel(d) for d in self._local.watched_drivers()]
            channels.extend(self._handlers)
            patterns = [self._fleet_pattern] if self._fleet else []
            self._subscribed = set(channels) | set(patterns)
            self._confirmations = {c: self._new_confirmation() for c in self._subscribed}
            self._resubscribing = set(self._subscribed)
            # Watchers that were subscribed before this connection missed whatever was
            # published while there was none: each is told once Redis confirms its channel
            # again (from then on nothing is missed), and reads its driver's state anew.
            # On the first connection every subscriber waited for it (unless told otherwise).
            self._catch_up = set()
            if self.connects or self._handed_out_unconfirmed:
                prefix = self._channel_prefix
                self._catch_up = {c for c in channels if c.startswith(prefix)} | set(patterns)
            self._handed_out_unconfirmed = False
            if channels:
                async with asyncio.timeout(self._op_timeout_s):
                    await pubsub.subscribe(*channels)
            if patterns:
                async with asyncio.timeout(self._op_timeout_s):
                    await pubsub.psubscribe(*patterns)
        self.connects += 1
        # Nothing was published to this connection before it existed.
        self.confirmed_at = started
        log.info("redis bus connected; %d channels subscribed", len(channels))

    async def _read(self, pubsub: PubSub) -> None:
        ping_every = self._ping_every_s
        idle = self._idle_ping_s
        monotonic = time.monotonic
        # When the unanswered PING was sent (None: none is out), and the last PING was sent.
        ping_sent: float | None = None
        last_ping = heard = monotonic()
        task = asyncio.current_task()
        while True:
            if self._remade_by_client:
                raise RedisError("redis bus connection was re-made by the client")
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (inside redis-py) can swallow a cancel that comes as
                # its read completes: honour it, or stop() would wait for this loop forever.
                raise asyncio.CancelledError
            now = monotonic()
            if ping_sent is None and now - last_ping >= ping_every:
                # Busy or idle: a PING's answer confirms every message published before it.
                ping_sent = last_ping = now
                async with asyncio.timeout(self._op_timeout_s):
                    await pubsub.ping()
            elif ping_sent is not None and now - max(ping_sent, heard) >= idle:
                # A connection that answers a PING with nothing, not even the messages queued
                # before its PONG, within `idle_ping_s` is dead even if TCP has not noticed
                # (a half-open socket after a partition). One that still delivers a backlog
                # is not: its PONG comes after it.
                raise RedisError("redis bus connection did not answer a ping")
            # Until the next PING is due, or the unanswered one's answer is late.
            due = last_ping + ping_every if ping_sent is None else max(ping_sent, heard) + idle
            message: dict[str, Any] | None = await pubsub.get_message(timeout=max(due - now, 0.001))
            if message is None:
                continue
            heard = monotonic()
            if message["type"] == "pong":
                if ping_sent is not None:
                    self.confirmed_at = ping_sent
                ping_sent = None
            else:
                await self._dispatch(message)

    def _remade_behind_our_back(self, _connection: object) -> None:
        """redis-py's own retry reconnected the pub/sub connection and subscribed again:
        what was published meanwhile is lost without a word. The reader then drops the
        connection and makes it again its own way (watchers told to catch up, disconnect
        listeners such as the read cache called)."""
        self._remade_by_client = True

    async def _dispatch(self, message: dict[str, Any]) -> None:
        """A message of the pub/sub connection (not a PONG) to whoever waits for it here."""
        kind = message["type"]
        if kind == "message":
            channel: bytes = message["channel"]
            prefix = self._channel_prefix
            if channel.startswith(prefix):
                driver_id = channel[len(prefix) :].decode()
                location = decode_location(driver_id, message["data"])
                if location is not None:
                    await self._local.publish((location,))
            else:
                self._handle_raw(channel, message["data"])
        elif kind == "pmessage":
            self._to_fleet(message["channel"], message["data"])
        elif kind in ("subscribe", "psubscribe"):
            channel = message["channel"]
            confirmation = self._confirmations.pop(channel, None)
            if confirmation is not None and not confirmation.done():
                confirmation.set_result(None)
            self._resubscribing.discard(channel)
            if channel in self._catch_up:
                self._catch_up.discard(channel)
                if channel == self._fleet_pattern:
                    for fleet in tuple(self._fleet):
                        fleet.mark_missed()
                else:
                    self._local.mark_missed(channel[len(self._channel_prefix) :].decode())

    def _to_fleet(self, channel: bytes, payload: bytes) -> None:
        """A message of the fleet pattern (every location channel) to the fleet subscriptions
        (the driver's own channel, if watched here, comes as a separate message)."""
        driver_id = channel[len(self._channel_prefix) :].decode()
        location = decode_location(driver_id, payload)
        if location is not None:
            for fleet in tuple(self._fleet):
                fleet.push((location,))

    def _handle_raw(self, channel: bytes, payload: bytes) -> None:
        for sub in tuple(self._handlers.get(channel, ())):
            try:
                sub.handler(payload)
            except Exception:
                # One broken handler must not end the reader every other channel relies on.
                log.exception("handler of redis channel %r failed", channel)

    async def _drop_connection(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._healthy = False
        self.confirmed_at = float("-inf")
        for listener in self.disconnect_listeners:
            listener()
        for confirmation in self._confirmations.values():
            if not confirmation.done():
                confirmation.set_result(None)  # nobody waits for a dead connection
        self._confirmations = {}
        self._resubscribing = set()
        if pubsub is not None:
            if pubsub.connection is not None:  # it goes back to the pool for commands
                pubsub.connection.deregister_connect_callback(self._remade_behind_our_back)
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- channel reference counting ----------------------------------------------------------
    def _channel(self, driver_id: str) -> bytes:
        return self._channel_prefix + driver_id.encode()

    def _new_confirmation(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    def _wanted(self, channel: bytes) -> bool:
        if channel == self._fleet_pattern:
            return bool(self._fleet)
        if channel.startswith(self._channel_prefix):
            return self._local.has_watchers(channel[len(self._channel_prefix) :].decode())
        return channel in self._handlers

    async def _sync_channel(self, channel: bytes) -> asyncio.Future[None] | None:
        """Make Redis's subscription to this channel match whether anyone here wants it;
        return the pending confirmation of a SUBSCRIBE, if any."""
        if not self._healthy:
            return None  # the reader subscribes every wanted channel on reconnect
        async with self._lock:
            wanted = self._wanted(channel)
            pubsub = self._pubsub
            if pubsub is None or not self._healthy:
                return None
            pattern = channel == self._fleet_pattern
            try:
                async with asyncio.timeout(self._op_timeout_s):
                    if wanted and channel not in self._subscribed:
                        self._confirmations[channel] = self._new_confirmation()
                        self._subscribed.add(channel)
                        await (pubsub.psubscribe if pattern else pubsub.subscribe)(channel)
                    elif not wanted and channel in self._subscribed:
                        self._subscribed.discard(channel)
                        self._confirmations.pop(channel, None)
                        self._resubscribing.discard(channel)
                        await (pubsub.punsubscribe if pattern else pubsub.unsubscribe)(channel)
            except (RedisError, OSError) as exc:  # TimeoutError too: redis-py then disconnects
                # The reader sees the same failure and reconnects with the full channel set.
                log.debug("redis bus (un)subscribe of %r failed: %s", channel, exc)
                return None
            return self._confirmations.get(channel)

    def _last_watcher_left(self, driver_id: str) -> None:
        self._schedule_sync(self._channel(driver_id))

    def _schedule_sync(self, channel: bytes) -> None:
        # Re-checked under the lock: someone may want the channel again by then.
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._unsubscribe_if_unwanted(channel))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unsubscribe_if_unwanted(self, channel: bytes) -> None:
        await self._sync_channel(channel)
