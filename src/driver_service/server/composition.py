"""The composition root: builds the adapters chosen by configuration and wires the services."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from driver_service.adapters.redis.dispatch_index import RedisDriverIndex
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.evaluation import ZoneEvaluator
from driver_service.app.event_publisher import EventPublisher, PublisherHooks
from driver_service.app.events import EventFeed, EventRetention
from driver_service.app.fanout import MemoryBus
from driver_service.app.history import Forgetter, LocationHistory
from driver_service.app.offline_sweep import OfflineSweeper
from driver_service.app.pacing import Pacer
from driver_service.app.ratelimit import RateLimiter
from driver_service.app.tracking import DriverTracking
from driver_service.app.webhook_delivery import DeliveryHooks, WebhookDelivery
from driver_service.app.webhooks import WebhookAdmin
from driver_service.app.zones import ZoneAdmin
from driver_service.dispatch.indexing import IndexingBus, IndexingRepository
from driver_service.dispatch.memory_index import MemoryDriverIndex
from driver_service.dispatch.ports import DriverIndex
from driver_service.dispatch.rebuild import Fill, rebuild_memory_index
from driver_service.dispatch.service import BackgroundLoop, Dispatch
from driver_service.domain.webhooks import RetryPolicy
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.observability.metrics.instrumented import (
    InstrumentedBus,
    InstrumentedRepository,
)
from driver_service.ports import DriverRepository, LocationBus, WebhookStore, WebhookTransport
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor
from driver_service.server.config import REDIS_SCHEMES, ServerSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from driver_service.adapters.postgres.repository import PostgresRepository
    from driver_service.adapters.redis.bus import RedisBus
    from driver_service.dispatch.ports import CommandRouter

log = logging.getLogger(__name__)

#: Key and channel prefix in Redis, so one Redis can serve several deployments.
REDIS_PREFIX = "ds:"
#: How often WatchEvents' feed reads the log for events other replicas logged (PostgreSQL);
#: one process's own events wake it at once.
EVENT_POLL_S_SHARED = 0.1
EVENT_POLL_S_ALONE = 1.0
#: The most shutdown waits for webhook delivery and its HTTP client to close (delivery stops
#: at once without endpoints, within about 0.5 s with deliveries in flight); it comes before
#: the calls in flight drain, so it is kept well inside any --shutdown-grace.
CLOSE_WEBHOOKS_S = 1.0


@dataclass
class Services:
    """The application services one server runs, over shared adapters."""

    tracking: DriverTracking
    dispatch: Dispatch
    zones: ZoneAdmin
    events: EventFeed
    sweeper: OfflineSweeper
    history: LocationHistory
    webhooks: WebhookAdmin
    delivery: WebhookDelivery
    transport: WebhookTransport
    retention: Supervised | None = None
    event_retention: Supervised | None = None
    #: Publishing the event log to a broker (--nats-url), if configured.
    publisher: EventPublisher | None = None
    _overrun: asyncio.Future[None] | None = field(default=None, repr=False)

    async def close_events(self) -> None:
        """Stop the offline sweeper, the log's retention, webhook delivery and publishing
        to a broker, end every WatchEvents stream."""
        if self.event_retention is not None:
            await self.event_retention.stop()
            self.event_retention = None
        await self.sweeper.close()
        await self._close_webhooks()
        await self.events.close()

    async def _close_webhooks(self) -> None:
        """Stop delivery, then close its HTTP client, and stop publishing to the broker (at
        the same time), within CLOSE_WEBHOOKS_S whatever happens: shutdown does not wait for
        a step that overruns (asyncio.wait_for would, for the cancelled step to end), e.g.
        a broker that stopped answering while its connection is flushed."""

        async def webhooks() -> None:
            await self.delivery.close()
            await self.transport.close()

        async def steps() -> None:
            publisher = self.publisher
            await asyncio.gather(webhooks(), publisher.close() if publisher else asyncio.sleep(0))

        closing = asyncio.ensure_future(steps())
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_WEBHOOKS_S)
        if not done:
            closing.cancel()
            self._overrun = closing  # referenced until it ends
            log.warning("closing event delivery took over %s s; going on", CLOSE_WEBHOOKS_S)
        elif closing.exception() is not None:
            log.warning("closing event delivery failed: %r", closing.exception())

    async def close(self) -> None:
        if self.retention is not None:
            await self.retention.stop()
        await self.close_events()
        await self.dispatch.close()
        await self.tracking.close()


async def open_store(
    settings: ServerSettings, evaluator: ZoneEvaluator | None = None
) -> SqliteRepository | PostgresRepository:
    """The durable store named by `--store` (SQLite file by default); with `evaluator`, it
    logs events in its location and status commits (the outbox)."""
    if settings.uses_postgres:
        from driver_service.adapters.postgres.repository import PostgresRepository

        assert settings.store is not None
        return await PostgresRepository.open(
            settings.store, timeout_s=settings.store_timeout, evaluator=evaluator
        )
    path = settings.sqlite_path()
    if settings.relative_sqlite_url() and not path.parent.exists():
        log.warning(
            "--store %s is relative to the working directory: creating %s (for an absolute "
            "path write four slashes, sqlite:////path)",
            settings.store,
            path.parent,
        )
    return await SqliteRepository.open(path, evaluator=evaluator)


async def open_live(
    settings: ServerSettings, durable: DriverRepository, supervisor: TaskSupervisor
) -> tuple[DriverRepository, LocationBus, tuple[Redis, RedisBus] | None]:
    """The live-state layer and bus named by `--bus`: in-process, or Redis shared by every
    worker and replica (current state read from Redis, fan-out over pub/sub)."""
    if not settings.bus.startswith(REDIS_SCHEMES):
        return durable, MemoryBus(), None
    from driver_service.adapters.redis.bus import RedisBus
    from driver_service.adapters.redis.connection import create_redis_client, redis_guard
    from driver_service.adapters.redis.live import LiveStateRepository
    from driver_service.adapters.redis.read_cache import DriverReadCache

    client = create_redis_client(settings.bus, timeout_s=settings.redis_timeout)
    # One guard for every user of this Redis: once one finds it hung, all skip it.
    guard = redis_guard(client, settings.redis_timeout)
    # With the read cache, PINGs often enough that its entries stay confirmed (read_cache.py).
    ping_every_s = settings.read_cache_staleness / 4 if settings.read_cache_size else None
    bus = RedisBus(
        client, prefix=REDIS_PREFIX, guard=guard, supervisor=supervisor, ping_every_s=ping_every_s
    )
    bus.start()
    # The repository closes the shared client last (DriverTracking closes the bus first).
    live = LiveStateRepository(durable, client, prefix=REDIS_PREFIX, close_client=True, guard=guard)
    if settings.read_cache_size:
        live.use_cache(
            DriverReadCache(
                bus,
                guard,
                live.key(""),
                max_entries=settings.read_cache_size,
                max_stale_s=settings.read_cache_staleness,
            )
        )
    return live, bus, (client, bus)


@dataclass
class _Built:
    tracking: DriverTracking
    index: DriverIndex | None
    redis: tuple[Redis, RedisBus] | None
    fills: list[Fill]
    durable: SqliteRepository | PostgresRepository
    evaluator: ZoneEvaluator
    #: Erasure of a driver's live state (Redis's hash), beside the index's and the store's.
    forget_live: list[Forgetter]


async def _build_tracking(
    settings: ServerSettings, metrics: ServiceMetrics | None, with_index: bool
) -> _Built:
    """The application over the configured adapters, decorated outermost first:

        repository: IndexingRepository → InstrumentedRepository → LiveStateRepository (with
                    Redis) → SqliteRepository | PostgresRepository
        bus:        IndexingBus → InstrumentedBus → MemoryBus | RedisBus

    The index decorators see only what the store accepted; the instrumented ones time the
    real adapters' calls (not the index's), so a slow store shows as a slow store."""
    # Every background task of this server, the bus reader's included, runs under it.
    supervisor = TaskSupervisor(
        count_failure=None if metrics is None else metrics.count_task_failure
    )
    evaluator = ZoneEvaluator()
    durable = await open_store(settings, evaluator)
    try:
        repository, bus, redis = await open_live(settings, durable, supervisor)
    except BaseException:
        await durable.close()
        raise
    # Derived state a rebuild fills from the store: Redis's live hashes, then the index.
    fills: list[Fill] = []
    forget_live: list[Forgetter] = []
    current = durable.current_driver if isinstance(durable, SqliteRepository) else None
    read_cache = None
    if redis is not None:
        from driver_service.adapters.redis.live import LiveStateRepository

        assert isinstance(repository, LiveStateRepository)
        fills.append(repository.fill)
        forget_live.append(repository.forget)
        # Replicas write the SQLite mirror's state to Redis instead: the read cache, if on.
        current = repository.current_driver if settings.read_cache_size else None
        read_cache = repository.cache
    limiter = (
        RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
    )
    rejected = None
    if metrics is not None:
        if read_cache is not None:
            cache = read_cache  # narrowed for the lambdas
            metrics.watch_read_cache(
                lambda: len(cache),
                lambda: 1.0 if cache.serving else 0.0,
                lambda: cache.hits,
                lambda: cache.fills,
                lambda: cache.evictions,
            )
        repository = InstrumentedRepository(repository, metrics)
        bus = InstrumentedBus(bus, metrics)
        rejected = metrics.rejected
    index: DriverIndex | None = None
    if with_index:
        # The spatial index follows every accepted update: in memory for one process, in
        # Redis when replicas share Redis (each replica's updates land in the same index).
        index = (
            MemoryDriverIndex() if redis is None
            else RedisDriverIndex(redis[0], prefix=REDIS_PREFIX, guard=redis[1].guard)
        )  # fmt: skip
        fills.append(index.fill)
        repository = IndexingRepository(repository, index)
        bus = IndexingBus(bus, index, repository)
    tracking = DriverTracking(
        repository,
        bus,
        rate_limiter=limiter,
        count_rejection=None if rejected is None else lambda reason: rejected[reason].inc(),
        supervisor=supervisor,
        # GetDriver without a wait: the SQLite mirror when this process alone writes it,
        # the read cache kept fresh by Redis pub/sub with Redis.
        current=current,
    )
    if metrics is not None:
        metrics.count_sessions(lambda: tracking.session_count)
    await tracking.start()
    if index is not None:
        forget_live.append(index.forget)
    return _Built(tracking, index, redis, fills, durable, evaluator, forget_live)


async def build_services(
    settings: ServerSettings, metrics: ServiceMetrics | None = None
) -> Services:
    """Tracking and dispatch over the configured adapters, instrumented when `metrics` is
    given (the server always gives it; tests may leave it out)."""
    built = await _build_tracking(settings, metrics, with_index=True)
    tracking, index, redis, fills = built.tracking, built.index, built.redis, built.fills
    assert index is not None

    try:
        background = await _rebuild_derived_state(settings, tracking, index, redis, fills)
    except BaseException:
        await tracking.close()
        raise
    # Commands and their state: this process's OfferBook, or Redis shared by every replica
    # (a command reaches the driver's session on whichever replica holds it).
    commands: CommandRouter | None = None
    if redis is not None:
        from driver_service.adapters.redis.command_router import RedisCommandRouter

        client, redis_bus = redis
        commands = RedisCommandRouter(client, redis_bus, tracking, prefix=REDIS_PREFIX)
    dispatch = Dispatch(
        tracking,
        index,
        stale_after_s=settings.stale_after,
        commands=commands,
        background=background,
    )
    if metrics is not None:
        metrics.count_stale_drivers(lambda: dispatch.stale_drivers)
    await dispatch.start()
    # Zones and events: the durable store itself (zones are not live state; the log is read
    # by id), its evaluator waking this process's watchers after each commit that logs.
    feed = EventFeed(
        built.durable,
        tracking.supervisor,
        poll_s=EVENT_POLL_S_SHARED if settings.uses_postgres else EVENT_POLL_S_ALONE,
    )
    sweeper = OfflineSweeper(built.durable, tracking.supervisor, settings.stale_after)
    try:
        await feed.start()
    except BaseException:
        await dispatch.close()
        await tracking.close()
        raise
    built.evaluator.add_listener(feed.notify)
    forget_feed = await _feed_erasure(feed, redis)
    delivery, admin, transport = await build_webhooks(
        settings, built.durable, tracking.supervisor, metrics
    )
    built.evaluator.add_listener(delivery.notify)
    delivery.start()
    publisher = build_publisher(settings, built.durable, tracking.supervisor, metrics)
    if publisher is not None:
        built.evaluator.add_listener(publisher.notify)
        publisher.start()
    sweeper.start()
    # History's and the event log's retention share one lane of the store: together they
    # take at most --history-retention-share of its time, not that share each.
    lane = asyncio.Lock()
    # Erasure reaches every store of the driver: commands, live state and the index, then
    # the durable store (history, current state, tracker state, logged events).
    history = LocationHistory(
        built.durable,
        retention_s=settings.history_retention_s,
        # Busy-aware: the share is the floor for a saturated writer; the less of its time
        # this process's commits take, the nearer a backlog drains to the idle share.
        pacer=Pacer(
            settings.history_retention_share, busy=lambda: tracking.writer.busy_s, lane=lane
        ),
        forget_commands=dispatch.commands.forget,
        forget_live=[*built.forget_live, *forget_feed],
    )
    # Storage for today's fixes before serving: made later, its ATTACH would make the first
    # uploads wait for its locks.
    try:
        await built.durable.prepare_history(time.time_ns())
    except Exception as exc:  # noqa: BLE001 - the retention loop makes them when it can
        log.warning("making history storage ahead failed, retrying in the background: %r", exc)
    if metrics is not None:
        metrics.watch_history(lambda: history.stats, lambda: history.expired_total)
    # Retention, partitions made ahead and the size figures: off the hot path, restarted
    # after a failure (a store that is away is retried at the next pass).
    retention = tracking.supervisor.start(
        "history-retention", history.run_retention, Policy.RESTART
    )
    # The event log's retention, the same way (its first pass at once: a short one).
    event_retention = tracking.supervisor.start(
        "event-retention",
        EventRetention(
            built.durable,
            settings.event_retention_s,
            pacer=Pacer(
                settings.history_retention_share, busy=lambda: tracking.writer.busy_s, lane=lane
            ),
        ).run,
        Policy.RESTART,
    )
    return Services(
        tracking,
        dispatch,
        ZoneAdmin(built.durable),
        feed,
        sweeper,
        history,
        admin,
        delivery,
        transport,
        retention,
        event_retention,
        publisher,
    )


async def _feed_erasure(feed: EventFeed, redis: tuple[Redis, RedisBus] | None) -> list[Forgetter]:
    """The erasure's steps for the copies of events the feed keeps in memory: this
    process's, and with Redis every replica's (adapters/redis/erasure_broadcast.py)."""
    if redis is None:
        return [feed.forget]
    from driver_service.adapters.redis.erasure_broadcast import ErasureBroadcast

    client, bus = redis
    erasures = ErasureBroadcast(client, bus, bus.guard, REDIS_PREFIX)
    await erasures.start(feed.drop_driver)
    feed.empty_ring_when(erasures.epoch)
    return [feed.forget, erasures.publish]


def build_publisher(
    settings: ServerSettings,
    durable: SqliteRepository | PostgresRepository,
    supervisor: TaskSupervisor,
    metrics: ServiceMetrics | None,
) -> EventPublisher | None:
    """The event log published to NATS JetStream (--nats-url), by a supervised loop (not
    started here) that connects on its own: a broker that is away at start-up delays
    publishing, not serving. Every replica publishes; the broker drops the copies by id."""
    if not settings.nats_urls:
        return None
    from driver_service.adapters.nats.jetstream import JetStreamSink

    sink = JetStreamSink(
        settings.nats_urls,
        settings.nats_stream,
        settings.nats_subject_prefix,
        timeout_s=settings.nats_timeout,
    )
    publisher = EventPublisher(
        sink,
        durable,
        supervisor,
        poll_s=EVENT_POLL_S_SHARED if settings.uses_postgres else EVENT_POLL_S_ALONE,
    )
    if metrics is not None:
        on_published, on_failure = metrics.watch_event_sink(
            sink.name,
            lambda: publisher.behind,
            lambda: 0.0 if publisher.problem else 1.0,
        )
        publisher.hooks = PublisherHooks(on_published, on_failure)
    return publisher


def retry_policy(settings: ServerSettings) -> RetryPolicy:
    return RetryPolicy(
        timeout_s=settings.webhook_timeout,
        max_age_s=settings.webhook_max_age,
        base_s=settings.webhook_retry_base,
        cap_s=settings.webhook_retry_cap,
        circuit_threshold=settings.webhook_circuit_threshold,
        circuit_cooldown_s=settings.webhook_circuit_cooldown,
    )


async def build_webhooks(
    settings: ServerSettings,
    durable: SqliteRepository | PostgresRepository,
    supervisor: TaskSupervisor,
    metrics: ServiceMetrics | None,
) -> tuple[WebhookDelivery, WebhookAdmin, WebhookTransport]:
    """Webhook endpoints in the durable store, delivered over httpx by a supervised loop
    (not started here), on every replica (leases share the work)."""
    from driver_service.adapters.http.webhook_transport import HttpxWebhookTransport

    store: WebhookStore
    if isinstance(durable, SqliteRepository):
        from driver_service.adapters.sqlite.webhooks import SqliteWebhookStore

        store = await SqliteWebhookStore(durable).open()
    else:
        from driver_service.adapters.postgres.webhooks import PostgresWebhookStore

        store = await PostgresWebhookStore(durable).open()
    transport = HttpxWebhookTransport(
        allow_private=settings.webhook_allow_private,
        max_connections=settings.webhook_max_concurrent,
    )
    hooks = DeliveryHooks()
    if metrics is not None:
        m = metrics
        hooks = DeliveryHooks(
            on_attempt=lambda o: m.count_webhook_attempt(
                o.endpoint_id, o.kind, o.duration_s, o.lag_s
            ),
            on_dead_letter=m.count_dead_letter,
        )
    delivery = WebhookDelivery(
        store,
        durable,
        transport,
        supervisor,
        retry_policy(settings),
        allow_http=settings.webhook_allow_http,
        max_concurrent=settings.webhook_max_concurrent,
        poll_s=EVENT_POLL_S_SHARED if settings.uses_postgres else EVENT_POLL_S_ALONE,
        hooks=hooks,
    )
    if metrics is not None:
        metrics.watch_webhooks(
            lambda: delivery.queue_depth,
            lambda: delivery.open_circuits,
            lambda: delivery.dead_letters,
        )
    admin = WebhookAdmin(
        store, durable, transport, delivery, allow_http=settings.webhook_allow_http
    )
    return delivery, admin, transport


async def build_tracking(
    settings: ServerSettings, metrics: ServiceMetrics | None = None
) -> DriverTracking:
    """Only the tracking service, without dispatch or its spatial index (for tests and
    benchmarks of the seed's service alone)."""
    return (await _build_tracking(settings, metrics, with_index=False)).tracking


async def _rebuild_derived_state(
    settings: ServerSettings,
    tracking: DriverTracking,
    index: DriverIndex,
    redis: tuple[Redis, RedisBus] | None,
    fills: list[Fill],
) -> list[BackgroundLoop]:
    """Fill derived state from the store before serving; return the loop that keeps Redis's
    rebuilt (none for one process: its index cannot lose its data while it runs).

    One process: the in-memory index, always (a store that cannot be read fails the start).
    Redis: only if its marker is missing (Redis is new or was emptied); if Redis is away or
    another replica is rebuilding, start anyway and let the loop retry every second."""
    if redis is None:
        await rebuild_memory_index(tracking.repository, index.fill, settings.stale_after)
        return []
    from driver_service.adapters.redis.index_rebuild import RedisRebuilder

    rebuilder = RedisRebuilder(
        redis[0], tracking.repository, fills, prefix=REDIS_PREFIX, horizon_s=settings.stale_after
    )
    try:
        await rebuilder.rebuild_if_missing()
    except Exception as exc:  # noqa: BLE001 - the loop retries; serving goes on meanwhile
        log.warning("rebuilding Redis's derived state at start failed, retrying: %r", exc)
    return [rebuilder]
