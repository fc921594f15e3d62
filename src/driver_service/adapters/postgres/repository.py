"""PostgreSQL DriverRepository (asyncpg pool): the same behaviour as SQLite, shared by replicas.

Several processes write one database, so current state cannot be mirrored in memory as the
SQLite adapter does: each batch locks its drivers' rows (in driver_id order, so overlapping
batches never deadlock) and decides from the locked rows which fixes advance.

Every operation, pool acquisition included, gets at most `timeout_s` (`--store-timeout`) and
runs in a task of its own that is abandoned when the time is up: after a cancellation asyncpg
sends a cancel request and rolls back, which wait for a hung server again (each bounded by
the same time as `command_timeout`, then the connection is terminated), so the caller does
not wait for that cleanup. After a failure the repository answers UNAVAILABLE at once until
its probe (`SELECT 1`) answers again.

Events (with an `EventEvaluator`): each location or status transaction evaluates the fixes
that advanced against the drivers' tracker states, read from the rows it holds locked, and
writes the new states and the events before it commits (the transactional outbox), so with
any number of replicas each event is produced once, in order per driver. Event ids come from
an identity column under a transaction-scoped advisory lock taken just before the insert and
held to the commit: ids are assigned in commit order, so a reader that has seen id N has
seen every event below N (a log read by id never skips one committed late). Only
transactions that log events take it, always after their row locks (no deadlock).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

import driver_service.adapters.postgres.schema as postgres_schema
from driver_service.domain import (
    INITIAL_STATUS,
    Driver,
    DriverNotFound,
    Location,
    Status,
    new_driver,
    new_location,
)
from driver_service.domain.conflicts import FixKey, may_be_stored_already, refused_updates
from driver_service.domain.errors import VersionMismatch, ZoneExists, ZoneNotFound
from driver_service.domain.events import (
    NEW_DRIVER,
    Event,
    LoggedEvent,
    TrackerState,
    event_bodies,
    event_from_row,
    logged_events,
    stored_alike,
    sweep_stale,
    with_times,
)
from driver_service.domain.zones import Zone, zone_columns, zone_from_columns
from driver_service.ports import (
    HISTORY_PAGE_SIZE,
    EventEvaluator,
    Forgotten,
    HistoryRow,
    HistoryStats,
    Recorded,
)
from driver_service.resilience.guard import DependencyGuard

POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
#: Bound of one store operation (`--store-timeout`): a 10,000-row commit takes ~50 ms.
DEFAULT_TIMEOUT_S = 2.0
#: Migrations at start may wait for another replica's (advisory lock) and rewrite tables.
MIGRATE_TIMEOUT_S = 30.0
#: What says the server itself is away (not that a statement is wrong).
_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

#: Batches of at least this many fixes go through one binary COPY of the fixes into a temp
#: table, from which SQL derives each driver's newest fix (create, lock, advance) and the
#: history rows; smaller ones as arrays through unnest(...). asyncpg's array encoder tests
#: every element with isinstance() against collections.abc (a Python call, ~2.8k
#: instructions; two for a text element): ~17k instructions a history row, ~48k a driver
#: (create, lock and advance). COPY costs two more round trips and ~0.2M instructions, and
#: pays off from a few rows: client instructions per update, commits of B advancing drivers
#: (callgrind): B=8 238k with arrays, 216k staged; B=32 127k, 72k; B=1000 69k, 27k. Was
#: 1,000 (for history only), chosen by wall time on 10,000 rows. The same bound applies
#: to tracker states and events (`_write_events`).
COPY_THRESHOLD = 8

_GET_DRIVER = (
    "SELECT driver_id, status, latitude, longitude, speed_mps, heading_degrees,"
    " location_at_ns, last_seen_at_ns FROM drivers WHERE driver_id = $1"
)
# Drivers first seen in this batch, created directly with their newest fix of the batch; the
# RETURNING rows say which were new. Sorted input: concurrent creators wait in one order.
_CREATE_DRIVERS = (
    "INSERT INTO drivers AS d (driver_id, status, latitude, longitude, speed_mps,"
    " heading_degrees, location_at_ns, last_seen_at_ns)"
    " SELECT u.driver_id, $1, u.latitude, u.longitude, u.speed_mps, u.heading_degrees,"
    " u.at_ns, u.at_ns FROM unnest($2::text[], $3::float8[], $4::float8[], $5::float8[],"
    " $6::float8[], $7::int8[]) AS u(driver_id, latitude, longitude, speed_mps,"
    " heading_degrees, at_ns) ORDER BY u.driver_id"
    " ON CONFLICT (driver_id) DO NOTHING RETURNING d.driver_id"
)
_LOCK_DRIVERS = (
    "SELECT driver_id, location_at_ns, last_seen_at_ns, tracker FROM drivers"
    " WHERE driver_id = ANY($1::text[]) ORDER BY driver_id FOR UPDATE"
)
# The same three steps from the batch's fixes staged by COPY (large batches): each driver's
# newest fix (the first copy of its newest time, as `_newest` picks it) kept in
# incoming_drivers; the new drivers created from it in driver_id order; all of them locked
# in driver_id order (the rows of those just created are ours already and are dropped by
# the caller: no array of their ids to encode); then each advanced to its newest fix if that is
# newer than the locked row's (the created ones hold theirs already), last seen never moved
# back.
_CREATE_STAGED_DRIVERS = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming_drivers (driver_id text, latitude float8,"
    " longitude float8, speed_mps float8, heading_degrees float8, at_ns bigint)"
    " ON COMMIT DELETE ROWS"
)
_CREATE_DRIVERS_STAGED = (
    "WITH u AS (INSERT INTO incoming_drivers SELECT DISTINCT ON (driver_id) driver_id,"
    " latitude, longitude, speed_mps, heading_degrees, recorded_at_ns FROM incoming_history"
    " ORDER BY driver_id, recorded_at_ns DESC, seq RETURNING *)"
    " INSERT INTO drivers AS d (driver_id, status, latitude, longitude, speed_mps,"
    " heading_degrees, location_at_ns, last_seen_at_ns)"
    " SELECT u.driver_id, $1, u.latitude, u.longitude, u.speed_mps, u.heading_degrees,"
    " u.at_ns, u.at_ns FROM u ORDER BY u.driver_id"
    " ON CONFLICT (driver_id) DO NOTHING RETURNING d.driver_id"
)
_LOCK_DRIVERS_STAGED = (
    "SELECT d.driver_id, d.location_at_ns, d.last_seen_at_ns, d.tracker FROM drivers AS d"
    " JOIN incoming_drivers AS u ON u.driver_id = d.driver_id"
    " ORDER BY d.driver_id FOR UPDATE OF d"
)
# The rest of a staged batch in one statement (one round trip): the drivers advanced, the
# history rows inserted in batch order (the first copy of a key wins, as in SQLite; history
# rows of one driver are only written under that driver's row lock), and the number of new
# history rows with the zones version (read after the row locks, see `_sync_zones`).
_ADVANCE_AND_INSERT_STAGED = (
    "WITH a AS (UPDATE drivers AS d SET latitude = u.latitude, longitude = u.longitude,"
    " speed_mps = u.speed_mps, heading_degrees = u.heading_degrees,"
    " location_at_ns = u.at_ns, last_seen_at_ns = greatest(d.last_seen_at_ns, u.at_ns)"
    " FROM incoming_drivers AS u WHERE d.driver_id = u.driver_id"
    " AND (d.location_at_ns IS NULL OR u.at_ns > d.location_at_ns)),"
    " h AS (INSERT INTO location_history (driver_id, recorded_at_ns, latitude, longitude,"
    " speed_mps, heading_degrees) SELECT driver_id, recorded_at_ns, latitude, longitude,"
    " speed_mps, heading_degrees FROM incoming_history ORDER BY seq"
    " ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT (SELECT count(*) FROM h), (SELECT version FROM zones_version)"
)
_ADVANCE_DRIVERS = (
    "UPDATE drivers AS d SET latitude = u.latitude, longitude = u.longitude,"
    " speed_mps = u.speed_mps, heading_degrees = u.heading_degrees,"
    " location_at_ns = u.at_ns, last_seen_at_ns = u.last_seen_at_ns"
    " FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::float8[],"
    " $6::int8[], $7::int8[]) AS u(driver_id, latitude, longitude, speed_mps,"
    " heading_degrees, at_ns, last_seen_at_ns) WHERE d.driver_id = u.driver_id"
)
_HISTORY_COLUMNS = (
    "driver_id",
    "recorded_at_ns",
    "latitude",
    "longitude",
    "speed_mps",
    "heading_degrees",
)
# In batch order and without ORDER BY: of two fixes with one key in a batch the first wins, as
# in SQLite. History rows of one driver are only written under that driver's row lock.
_INSERT_HISTORY_UNNEST = (
    "INSERT INTO location_history (driver_id, latitude, longitude, speed_mps, heading_degrees,"
    " recorded_at_ns) SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[],"
    " $4::float8[], $5::float8[], $6::int8[]) ON CONFLICT DO NOTHING"
)
_STAGING_TABLE = "incoming_history"
# `seq` numbers the rows in batch order (COPY sends them in order).
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming_history (driver_id text, recorded_at_ns bigint,"
    " latitude float8, longitude float8, speed_mps float8, heading_degrees float8,"
    " seq bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
)
# The stored fixes of some keys (read back only when a batch inserted fewer rows than it had).
_STORED_FIXES = (
    "SELECT h.driver_id, h.latitude, h.longitude, h.speed_mps, h.heading_degrees,"
    " h.recorded_at_ns FROM location_history AS h JOIN unnest($1::text[], $2::int8[])"
    " AS k(driver_id, recorded_at_ns) ON h.driver_id = k.driver_id"
    " AND h.recorded_at_ns = k.recorded_at_ns"
)
_SET_STATUS = (
    "INSERT INTO drivers AS d (driver_id, status, last_seen_at_ns) VALUES ($1, $2, $3)"
    " ON CONFLICT (driver_id) DO UPDATE SET status = excluded.status,"
    " last_seen_at_ns = greatest(d.last_seen_at_ns, excluded.last_seen_at_ns)"
    " RETURNING driver_id, status, latitude, longitude, speed_mps, heading_degrees,"
    " location_at_ns, last_seen_at_ns"
)
_SEEN_SINCE = (
    "SELECT driver_id, status, latitude, longitude, speed_mps, heading_degrees,"
    " location_at_ns, last_seen_at_ns FROM drivers WHERE driver_id > $1"
    " AND last_seen_at_ns >= $2 ORDER BY driver_id LIMIT $3"
)
#: A `seen_since` before every driver's last event: the whole fleet.
_EVER = -(2**63)
#: pg_advisory_xact_lock key of the event log's inserts ("drvevnt1"): ids in commit order.
EVENT_LOCK_KEY = int.from_bytes(b"drvevnt1", "big", signed=True)
_ZONE_COLUMNS = (
    "zone_id, name, labels, shape, dwell_ns, version, created_at_ns, updated_at_ns, prepared"
)
_SET_TRACKERS = (
    "UPDATE drivers AS d SET tracker = u.tracker FROM unnest($1::text[], $2::text[])"
    " AS u(driver_id, tracker) WHERE d.driver_id = u.driver_id"
)
_INSERT_EVENTS = (
    "INSERT INTO events (type, driver_id, zone_id, at_ns, recorded_at_ns, body)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[],"
    " $6::text[]) RETURNING id"
)
# The same two writes from rows staged by COPY (COPY_THRESHOLD or more): the tracker states of
# rows this transaction holds locked (any order), and the events in their order (ids are
# assigned in the order the ordered SELECT yields the rows), with the newest id.
_STAGED_TRACKERS = "incoming_trackers"
_TRACKER_COLUMNS = ("driver_id", "tracker")
_CREATE_STAGED_TRACKERS = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming_trackers (driver_id text, tracker text)"
    " ON COMMIT DELETE ROWS"
)
_SET_TRACKERS_STAGED = (
    "UPDATE drivers AS d SET tracker = u.tracker FROM incoming_trackers AS u"
    " WHERE d.driver_id = u.driver_id"
)
_STAGED_EVENTS = "incoming_events"
_EVENT_COLUMNS = ("type", "driver_id", "zone_id", "at_ns", "recorded_at_ns", "body")
_CREATE_STAGED_EVENTS = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming_events (type text, driver_id text, zone_id text,"
    " at_ns bigint, recorded_at_ns bigint, body text, seq bigint GENERATED ALWAYS AS IDENTITY)"
    " ON COMMIT DELETE ROWS"
)
_INSERT_EVENTS_STAGED = (
    "WITH i AS (INSERT INTO events (type, driver_id, zone_id, at_ns, recorded_at_ns, body)"
    " SELECT type, driver_id, zone_id, at_ns, recorded_at_ns, body FROM incoming_events"
    " ORDER BY seq RETURNING id) SELECT array_agg(id ORDER BY id) FROM i"
)
#: The first event (by id) to keep: the oldest recorded at or after the cutoff.
_FIRST_KEPT_EVENT = "SELECT id FROM events WHERE recorded_at_ns >= $1 ORDER BY id LIMIT 1"
_EXPIRE_EVENTS = (
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < $1 ORDER BY id LIMIT $2)"
)
_EVENTS_AFTER = (
    "SELECT id, type, driver_id, zone_id, at_ns, recorded_at_ns, body FROM events"
    " WHERE id > $1 ORDER BY id LIMIT $2"
)
#: Candidates for driver.offline, then locked and checked again one batch at a time.
_STALE_CANDIDATES = (
    "SELECT driver_id FROM drivers WHERE last_seen_at_ns < $1"
    " AND tracker LIKE '%\"online\":true%' ORDER BY driver_id"
)
_LOCK_TRACKERS = (
    "SELECT driver_id, tracker, location_at_ns, last_seen_at_ns FROM drivers"
    " WHERE driver_id = ANY($1::text[]) ORDER BY driver_id FOR UPDATE"
)
_HISTORY = (
    "SELECT latitude, longitude, speed_mps, heading_degrees, recorded_at_ns"
    " FROM location_history WHERE driver_id = $1 AND recorded_at_ns >= $2"
    " AND recorded_at_ns < $3 ORDER BY recorded_at_ns LIMIT $4"
)

_HISTORY_PAGE = (
    "SELECT latitude, longitude, speed_mps, heading_degrees, recorded_at_ns"
    " FROM location_history WHERE driver_id = $1 AND recorded_at_ns >= $2"
    " AND recorded_at_ns < $3 ORDER BY recorded_at_ns LIMIT $4"
)
_DRIVER_EXISTS = "SELECT EXISTS (SELECT 1 FROM drivers WHERE driver_id = $1)"
_FORGET_HISTORY = (
    "DELETE FROM location_history WHERE driver_id = $1 AND recorded_at_ns IN"
    " (SELECT recorded_at_ns FROM location_history WHERE driver_id = $1"
    " ORDER BY recorded_at_ns LIMIT $2)"
)
#: Rows one erasure transaction deletes (each well within --store-timeout).
FORGET_BATCH = 10_000
_DAY_NS = 86_400 * 10**9
_PARTITION_PREFIX = "location_history_d"
#: Daily partitions made ahead of the current day (and one behind, for late fixes).
PARTITIONS_AHEAD = 3
#: Serializes partition maintenance between replicas ("drvparts" as a signed 64-bit int).
_PARTITION_LOCK_KEY = int.from_bytes(b"drvparts", "big", signed=True)
#: Partition maintenance waits for locks (ATTACH, DETACH CONCURRENTLY) longer than a call.
_MAINTENANCE_TIMEOUT_S = 60.0
_MOVE_FROM_DEFAULT = (
    "DELETE FROM location_history_default WHERE recorded_at_ns >= $1 AND recorded_at_ns < $2"
    " RETURNING *"
)
_PARTITIONS = (
    "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_inherits i"
    " JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'location_history'::regclass ORDER BY c.relname"
)
#: How long retention's DETACH waits for the parent's lock before giving way to ingestion:
#: while it waits, every insert into history queues behind it.
DETACH_LOCK_TIMEOUT_MS = 50
_DETACH_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT_MS}ms'"
#: Daily partitions that are no longer attached (a detach whose drop did not happen).
_DETACHED = (
    "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND NOT c.relispartition"
    " AND starts_with(c.relname, 'location_history_d') AND c.relnamespace ="
    " (SELECT p.relnamespace FROM pg_class p WHERE p.oid = 'location_history'::regclass)"
)
#: One step of expiry in the default partition (fixes of days without a partition).
_EXPIRE_DEFAULT = (
    "DELETE FROM location_history_default WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM location_history_default WHERE recorded_at_ns < $1 LIMIT $2))"
)
_HISTORY_SIZE = (
    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint,"
    " coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_inherits i"
    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'location_history'::regclass"
)
# The oldest fix: per driver, the first entry of the primary key (no index on time alone,
# which every insert would have to maintain).
_OLDEST_FIX = (
    "SELECT min(x.recorded_at_ns) FROM drivers AS d CROSS JOIN LATERAL"
    " (SELECT h.recorded_at_ns FROM location_history AS h WHERE h.driver_id = d.driver_id"
    " ORDER BY h.recorded_at_ns LIMIT 1) AS x"
)


def partition_name(day: int) -> str:
    """The daily partition of UTC day `day` (days since the epoch): location_history_dYYYYMMDD."""
    date = datetime.date(1970, 1, 1) + datetime.timedelta(days=day)
    return f"{_PARTITION_PREFIX}{date:%Y%m%d}"


def partition_day(name: str) -> int | None:
    """The day of a daily partition's name; None for another table (the default one)."""
    if not name.startswith(_PARTITION_PREFIX):
        return None
    try:
        date = datetime.datetime.strptime(name[len(_PARTITION_PREFIX) :], "%Y%m%d").date()
    except ValueError:
        return None
    return (date - datetime.date(1970, 1, 1)).days


def _expired_partition(name: str, before_ns: int) -> bool:
    """Whether `name` is a daily partition whose whole day is before `before_ns`."""
    day = partition_day(name)
    return day is not None and (day + 1) * _DAY_NS <= before_ns


def is_postgres_url(url: str) -> bool:
    """True for `postgresql://…` and `postgres://…` store URLs."""
    return urlsplit(url).scheme in POSTGRES_SCHEMES


def redact_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _driver_from_record(row: Any) -> Driver:
    driver_id, status, lat, lon, speed, heading, at_ns, last_seen = row
    location = None
    if at_ns is not None:
        location = new_location(driver_id, lat, lon, speed, heading, at_ns)
    return new_driver(driver_id, Status(status), location, last_seen)


def _newest(locations: Sequence[Location]) -> dict[str, Location]:
    """Each driver's newest fix of a batch (of equal times, the first)."""
    newest: dict[str, Location] = {}
    for loc in locations:
        seen = newest.get(loc.driver_id)
        if seen is None or loc.recorded_at_ns > seen.recorded_at_ns:
            newest[loc.driver_id] = loc
    return newest


def _columns(locations: Sequence[Location]) -> tuple[list[Any], ...]:
    """The fixes as arrays in Location's field order (the unnest(...) statements' order)."""
    return (
        [x.driver_id for x in locations],
        [x.latitude for x in locations],
        [x.longitude for x in locations],
        [x.speed_mps for x in locations],
        [x.heading_degrees for x in locations],
        [x.recorded_at_ns for x in locations],
    )


def _row_count(status: str) -> int:
    """Rows affected, from a command status such as "INSERT 0 42"."""
    return int(status.rsplit(" ", 1)[1])


async def _prepare_connection(connection: Any) -> None:
    """Per-connection setup: the COPY staging tables live as long as the connection (one
    simple query: no arguments)."""
    await connection.execute(
        f"{_CREATE_STAGING}; {_CREATE_STAGED_DRIVERS}; {_CREATE_STAGED_TRACKERS};"
        f" {_CREATE_STAGED_EVENTS}"
    )


async def _keep_session(connection: Any) -> None:
    """Pool reset that keeps the session (and its staging table): asyncpg still rolls back any
    open transaction; we set no other session state, so the default reset query (one more
    round trip per call) would buy nothing."""


class PostgresRepository:
    """DriverRepository on PostgreSQL. Create with `await PostgresRepository.open(url)`."""

    def __init__(
        self,
        pool: Any,
        url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        evaluator: EventEvaluator | None = None,
    ) -> None:
        self._pool = pool
        self._evaluator = evaluator
        #: Serialises zone reloads of this process's evaluator (transactions run concurrently).
        self._zones_lock = asyncio.Lock()
        self.url = redact_url(url)
        self._closed = False
        #: Seconds spent on expiry steps (HistoryStore.expiry_busy_s: retention's pace).
        self.expiry_busy_s = 0.0
        self.guard = DependencyGuard(
            "postgresql",
            timeout_s,
            lambda: pool.fetchval("SELECT txid_current()"),
            failures=_FAILURES,
            message="driver store is unavailable; retry shortly",
            detach_probe=True,
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        migrate: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = 10.0,
        evaluator: EventEvaluator | None = None,
    ) -> PostgresRepository:
        """Connect a pool; apply pending migrations (`migrate=True`) or refuse to start on a
        schema of another version (`migrate=False`, when `driver-service migrate` runs them).
        `timeout_s` bounds every later operation (see the module docs)."""
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            # Bounds each statement, and the cancel request asyncpg sends after a timeout or
            # cancellation (past it the connection is terminated, never reused half-way).
            command_timeout=timeout_s,
            timeout=connect_timeout_s,
            init=_prepare_connection,
            reset=_keep_session,
            # Explicit: an acknowledged batch must be durable whatever the server's default.
            server_settings={"application_name": "driver-service", "synchronous_commit": "on"},
        )
        try:
            # Not through the pool: its statements get `timeout_s`, far too little for this.
            connection = await asyncpg.connect(
                url, timeout=connect_timeout_s, command_timeout=MIGRATE_TIMEOUT_S
            )
            try:
                if migrate:
                    await postgres_schema.migrate(connection)
                else:
                    await postgres_schema.check(connection)
            finally:
                await connection.close()
        except BaseException:
            pool.terminate()
            raise
        return cls(pool, url, timeout_s, evaluator)

    @property
    def pool(self) -> Any:
        """The connection pool, for the other stores on this database (webhooks)."""
        return self._pool

    async def get_driver(self, driver_id: str) -> Driver | None:
        row = await self.guard.call(lambda: self._pool.fetchrow(_GET_DRIVER, driver_id))
        return None if row is None else _driver_from_record(row)

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        if not locations:
            return Recorded()
        recorded, logged = await self.guard.call(lambda: self._record_locations(locations))
        self._hand_over(logged)
        return recorded

    def _hand_over(self, logged: list[LoggedEvent]) -> None:
        """Give the events a commit logged to the evaluator's listeners (in the event loop's
        thread, once the commit is done: a transaction that failed or timed out hands over
        none, and readers of the log find whatever of it did commit)."""
        if logged and self._evaluator is not None:
            self._evaluator.logged(logged)

    async def _record_locations(
        self, locations: Sequence[Location]
    ) -> tuple[Recorded, list[LoggedEvent]]:
        staged = len(locations) >= COPY_THRESHOLD
        newest = {} if staged else _newest(locations)
        async with self._pool.acquire() as con, con.transaction():
            if staged:
                created, locked = await self._lock_staged(con, locations)
            else:
                created, locked = await self._lock_drivers(con, newest)
            # Newest fix time per driver as this transaction sees it; None: no location yet.
            current: dict[str, int | None] = dict.fromkeys(created)
            last_seen: dict[str, int] = {}
            trackers: dict[str, str | None] = {}
            for driver_id, at_ns, seen_ns, tracker in locked:
                current[driver_id] = at_ns
                last_seen[driver_id] = seen_ns
                trackers[driver_id] = tracker
            before = dict(current)
            advanced: list[Location] = []
            for loc in locations:
                at_ns = current[loc.driver_id]
                if at_ns is None or loc.recorded_at_ns > at_ns:
                    current[loc.driver_id] = loc.recorded_at_ns
                    advanced.append(loc)
            zones_version: int | None = None
            if staged:
                inserted, zones_version = await con.fetchrow(_ADVANCE_AND_INSERT_STAGED)
            else:
                await self._advance_drivers(con, newest, created, current, before, last_seen)
                inserted = _row_count(
                    await con.execute(_INSERT_HISTORY_UNNEST, *_columns(locations))
                )
            conflicts: tuple[Location, ...] = ()
            if inserted < len(locations):  # rare
                conflicts = await self._conflicts(con, locations, before)
            logged: list[LoggedEvent] = []
            evaluator = self._evaluator
            if evaluator is not None and advanced:
                await self._sync_zones(con, evaluator, zones_version)
                logged = await self._evaluate(con, evaluator, advanced, trackers, before, last_seen)
        return Recorded(advanced, conflicts), logged

    async def _evaluate(
        self,
        con: Any,
        evaluator: EventEvaluator,
        advanced: list[Location],
        trackers: dict[str, str | None],
        before: dict[str, int | None],
        last_seen: dict[str, int],
    ) -> list[LoggedEvent]:
        """Evaluate the advanced fixes against the locked drivers' tracker states and write
        what changed (the events logged, as the log holds them). A driver whose every newer
        fix moves only its times (`times_only`: most of them, with no zone) is left out: its
        state would not be written (see _write_events) and it logs nothing."""
        states: dict[str, TrackerState] = {}
        still: set[str] = set()
        moves_times_only = evaluator.times_only
        for driver_id, text in trackers.items():
            if text is None:
                continue
            stored = TrackerState.from_json(text)
            fix_ns = before[driver_id]
            if fix_ns is not None and moves_times_only(stored):
                still.add(driver_id)
            else:
                # The fix and last-seen times are the locked row's (the stored state's are
                # those of its last write: see _write_events).
                states[driver_id] = with_times(stored, fix_ns, last_seen[driver_id])
        if still:
            advanced = [x for x in advanced if x.driver_id not in still]
            if not advanced:
                return []
        new_states, events = evaluator.on_locations(states, advanced)
        return await self._write_events(con, new_states, events, states)

    @staticmethod
    async def _lock_drivers(con: Any, newest: dict[str, Location]) -> tuple[set[str], list[Any]]:
        """Create the drivers first seen here with their newest fix, then lock the others'
        rows, both in driver_id order (concurrent batches wait in one order, never deadlock):
        the ids created, and the locked rows (driver_id, location_at_ns, last_seen, tracker)."""
        ids = sorted(newest)
        new = [newest[i] for i in ids]
        created_rows = await con.fetch(_CREATE_DRIVERS, INITIAL_STATUS.value, *_columns(new))
        created = {row[0] for row in created_rows}
        existing = [i for i in ids if i not in created]
        return created, (await con.fetch(_LOCK_DRIVERS, existing) if existing else [])

    @staticmethod
    async def _lock_staged(con: Any, locations: Sequence[Location]) -> tuple[set[str], list[Any]]:
        """`_lock_drivers` for a batch staged by one COPY of its fixes (no array per column):
        the newest fix per driver is picked by SQL from the staged rows, which
        `_ADVANCE_AND_INSERT_STAGED` then inserts into history."""
        await con.copy_records_to_table(
            _STAGING_TABLE,
            records=[
                (
                    x.driver_id,
                    x.recorded_at_ns,
                    x.latitude,
                    x.longitude,
                    x.speed_mps,
                    x.heading_degrees,
                )
                for x in locations
            ],
            columns=_HISTORY_COLUMNS,
        )
        created = {row[0] for row in await con.fetch(_CREATE_DRIVERS_STAGED, INITIAL_STATUS.value)}
        locked = await con.fetch(_LOCK_DRIVERS_STAGED)
        if created:
            locked = [row for row in locked if row[0] not in created]
        return created, locked

    @staticmethod
    async def _advance_drivers(
        con: Any,
        newest: dict[str, Location],
        created: set[str],
        current: dict[str, int | None],
        before: dict[str, int | None],
        last_seen: dict[str, int],
    ) -> None:
        """An existing driver that advanced now holds its newest fix of the batch."""
        moved = [newest[i] for i in sorted(newest) if i not in created and current[i] != before[i]]
        if moved:
            await con.execute(
                _ADVANCE_DRIVERS,
                *_columns(moved),
                [max(last_seen[x.driver_id], x.recorded_at_ns) for x in moved],
            )

    # --- events (the outbox) and zones ---------------------------------------------------------

    async def _sync_zones(
        self, con: Any, evaluator: EventEvaluator, version: int | None = None
    ) -> None:
        """Give the evaluator the zones committed now if its version is not the stored one
        (read after the drivers' row locks: whatever an earlier update of these drivers
        was evaluated against is committed, so this index is at least as new). `version`:
        read already by a statement that started after the locks."""
        if version is None:
            version = await con.fetchval("SELECT version FROM zones_version")
        if version <= evaluator.zones_version:  # a concurrent transaction may load a newer one
            return
        async with self._zones_lock:
            if version <= evaluator.zones_version:
                return
            rows = await con.fetch("SELECT zone_id, version FROM zones WHERE NOT deleted")
            live = {row[0]: row[1] for row in rows}
            wanted = evaluator.outdated_zones(live)
            fetched: list[Zone] = []
            if wanted:
                fetched = [
                    zone_from_columns(*row)
                    for row in await con.fetch(
                        f"SELECT {_ZONE_COLUMNS} FROM zones WHERE zone_id = ANY($1::text[])",  # noqa: S608
                        wanted,
                    )
                ]
            evaluator.load_zones(version, live, fetched)

    @staticmethod
    async def _write_events(
        con: Any,
        states: dict[str, TrackerState],
        events: Sequence[Event],
        before: Mapping[str, TrackerState],
    ) -> list[LoggedEvent]:
        """Write tracker states and log events in the open transaction; the events as the
        log holds them (each row's id is drawn as it is inserted, in the rows' order, under
        the advisory lock: increasing in the events' order). A
        state that differs from the one read (`before`) only in its fix and last-seen times is
        not written: every reader takes those from the driver's row, locked with the state."""
        ids = sorted(d for d, state in states.items() if not stored_alike(before.get(d), state))
        if len(ids) >= COPY_THRESHOLD:
            await con.copy_records_to_table(
                _STAGED_TRACKERS,
                records=[(i, states[i].to_json()) for i in ids],
                columns=_TRACKER_COLUMNS,
            )
            await con.execute(_SET_TRACKERS_STAGED)
        elif ids:
            await con.execute(_SET_TRACKERS, ids, [states[i].to_json() for i in ids])
        if not events:
            return []
        await con.execute("SELECT pg_advisory_xact_lock($1)", EVENT_LOCK_KEY)
        now = time.time_ns()
        if len(events) >= COPY_THRESHOLD:
            await con.copy_records_to_table(
                _STAGED_EVENTS,
                records=[
                    (e.type.value, e.driver_id, e.zone_id, e.at_ns, now, body)
                    for e, body in zip(events, event_bodies(events), strict=True)
                ],
                columns=_EVENT_COLUMNS,
            )
            ids = await con.fetchval(_INSERT_EVENTS_STAGED)
            return logged_events(ids, now, events)
        rows = await con.fetch(
            _INSERT_EVENTS,
            [e.type.value for e in events],
            [e.driver_id for e in events],
            [e.zone_id for e in events],
            [e.at_ns for e in events],
            [now] * len(events),
            event_bodies(events),
        )
        return logged_events(sorted(row[0] for row in rows), now, events)

    async def read_events(self, after_id: int, limit: int) -> list[LoggedEvent]:
        rows = await self.guard.call(lambda: self._pool.fetch(_EVENTS_AFTER, after_id, limit))
        return [event_from_row(*row) for row in rows]

    async def last_event_id(self) -> int:
        value = await self.guard.call(lambda: self._pool.fetchval("SELECT max(id) FROM events"))
        return int(value or 0)

    async def oldest_event_id(self) -> int:
        value = await self.guard.call(lambda: self._pool.fetchval("SELECT min(id) FROM events"))
        return int(value or 0)

    async def expire_events(self, before_ns: int, batch: int) -> int:
        """Off the hot path: no advisory lock (deleting the oldest ids never reorders the
        log), a short transaction per batch."""
        async with self._pool.acquire() as con:
            newest = await con.fetchval("SELECT max(id) FROM events")
            if newest is None:
                return 0
            first_kept = await con.fetchval(_FIRST_KEPT_EVENT, before_ns)
            end = newest if first_kept is None else min(int(first_kept), int(newest))
            status = await con.execute(_EXPIRE_EVENTS, end, batch, timeout=_MAINTENANCE_TIMEOUT_S)
        return _row_count(status)

    async def sweep_offline(self, now_ns: int, stale_after_ns: int) -> int:
        """Candidates from one scan; each batch then locked, checked again under the lock
        and changed only if still online and stale: of replicas sweeping at once, the first
        logs the driver.offline and the others find the driver offline."""
        rows = await self.guard.call(
            lambda: self._pool.fetch(_STALE_CANDIDATES, now_ns - stale_after_ns)
        )
        candidates = [row[0] for row in rows]
        count = 0
        for start in range(0, len(candidates), 500):
            batch = candidates[start : start + 500]
            logged = await self.guard.call(
                functools.partial(self._sweep_batch, batch, now_ns, stale_after_ns)
            )
            count += len(logged)
            self._hand_over(logged)
        return count

    async def _sweep_batch(
        self, driver_ids: list[str], now_ns: int, stale_after_ns: int
    ) -> list[LoggedEvent]:
        async with self._pool.acquire() as con, con.transaction():
            states: dict[str, TrackerState] = {}
            events: list[Event] = []
            for driver_id, text, fix_ns, seen_ns in await con.fetch(_LOCK_TRACKERS, driver_ids):
                if text is None:
                    continue
                stored = with_times(TrackerState.from_json(text), fix_ns, seen_ns)
                state, event = sweep_stale(stored, driver_id, now_ns, stale_after_ns)
                if event is not None:
                    states[driver_id] = state
                    events.append(event)
            events.sort(key=lambda e: (e.at_ns, e.driver_id))
            return await self._write_events(con, states, events, {})

    async def create_zone(self, zone: Zone, now_ns: int) -> Zone:
        stored = Zone(
            zone.zone_id, zone.name, zone.labels, zone.shape, zone.dwell_ns, 1, now_ns, now_ns
        )

        async def create() -> None:
            async with self._pool.acquire() as con, con.transaction():
                status = await con.execute(
                    f"INSERT INTO zones ({_ZONE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"  # noqa: S608
                    " ON CONFLICT (zone_id) DO NOTHING",
                    *zone_columns(stored),
                )
                if _row_count(status) == 0:
                    raise ZoneExists(zone.zone_id)
                await con.execute("UPDATE zones_version SET version = version + 1")

        await self.guard.call(create)
        return stored

    @staticmethod
    async def _live_zone(con: Any, zone_id: str, expected: int, lock: bool) -> Zone:
        row = await con.fetchrow(
            f"SELECT {_ZONE_COLUMNS} FROM zones WHERE zone_id = $1 AND NOT deleted"  # noqa: S608
            + (" FOR UPDATE" if lock else ""),
            zone_id,
        )
        if row is None:
            raise ZoneNotFound(zone_id)
        zone = zone_from_columns(*row)
        if expected and zone.version != expected:
            raise VersionMismatch(zone_id, expected, zone.version)
        return zone

    async def get_zone(self, zone_id: str) -> Zone:
        async def get() -> Zone:
            async with self._pool.acquire() as con:
                return await self._live_zone(con, zone_id, 0, lock=False)

        return await self.guard.call(get)

    async def list_zones(self, after_id: str, limit: int) -> list[Zone]:
        rows = await self.guard.call(
            lambda: self._pool.fetch(
                f"SELECT {_ZONE_COLUMNS} FROM zones WHERE zone_id > $1 AND NOT deleted"  # noqa: S608
                " ORDER BY zone_id LIMIT $2",
                after_id,
                limit,
            )
        )
        return [zone_from_columns(*row) for row in rows]

    async def update_zone(self, zone: Zone, expected_version: int, now_ns: int) -> Zone:
        async def update() -> Zone:
            async with self._pool.acquire() as con, con.transaction():
                old = await self._live_zone(con, zone.zone_id, expected_version, lock=True)
                new = Zone(
                    zone.zone_id,
                    zone.name,
                    zone.labels,
                    zone.shape,
                    zone.dwell_ns,
                    old.version + 1,
                    old.created_at_ns,
                    now_ns,
                )
                await con.execute(
                    "UPDATE zones SET name = $2, labels = $3, shape = $4, dwell_ns = $5,"
                    " version = $6, created_at_ns = $7, updated_at_ns = $8, prepared = $9"
                    " WHERE zone_id = $1",
                    *zone_columns(new),
                )
                await con.execute("UPDATE zones_version SET version = version + 1")
                return new

        return await self.guard.call(update)

    async def delete_zone(self, zone_id: str, expected_version: int, now_ns: int) -> None:
        async def delete() -> None:
            async with self._pool.acquire() as con, con.transaction():
                await self._live_zone(con, zone_id, expected_version, lock=True)
                await con.execute(
                    "UPDATE zones SET deleted = true, version = version + 1,"
                    " updated_at_ns = $2 WHERE zone_id = $1",
                    zone_id,
                    now_ns,
                )
                await con.execute("UPDATE zones_version SET version = version + 1")

        await self.guard.call(delete)

    @staticmethod
    async def _conflicts(
        con: Any, locations: Sequence[Location], newest_before: dict[str, int | None]
    ) -> tuple[Location, ...]:
        """The updates refused for a different stored fix of their key, read back in the
        batch's transaction (its drivers' rows are locked, so their history holds still);
        only keys that may predate the batch are read."""
        keys = {
            (x.driver_id, x.recorded_at_ns): None
            for x in locations
            if may_be_stored_already(x, newest_before[x.driver_id])
        }
        stored: dict[FixKey, Location] = {}
        if keys:
            rows = await con.fetch(_STORED_FIXES, [k[0] for k in keys], [k[1] for k in keys])
            stored = {(row[0], row[5]): new_location(*row) for row in rows}
        return refused_updates(locations, stored)

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        evaluator = self._evaluator
        if evaluator is None:
            row = await self.guard.call(
                lambda: self._pool.fetchrow(_SET_STATUS, driver_id, status.value, at_ns)
            )
            return _driver_from_record(row)

        async def set_and_log() -> tuple[Driver, list[LoggedEvent]]:
            async with self._pool.acquire() as con, con.transaction():
                # The upsert locks the row; the tracker state read next holds still.
                row = await con.fetchrow(_SET_STATUS, driver_id, status.value, at_ns)
                text = await con.fetchval(
                    "SELECT tracker FROM drivers WHERE driver_id = $1", driver_id
                )
                before = NEW_DRIVER
                if text is not None:  # the times are the row's (see _write_events)
                    stored = TrackerState.from_json(text)
                    before = with_times(stored, row["location_at_ns"], row["last_seen_at_ns"])
                state, events = evaluator.on_status(before, driver_id, status, at_ns)
                logged = await self._write_events(
                    con, {driver_id: state}, events, {driver_id: before}
                )
                return _driver_from_record(row), logged

        driver, logged = await self.guard.call(set_and_log)
        self._hand_over(logged)
        return driver

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        rows = await self.guard.call(
            lambda: self._pool.fetch(_HISTORY, driver_id, start_ns, end_ns, limit)
        )
        return [new_location(driver_id, *row) for row in rows]

    async def history_pages(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        page_size: int = HISTORY_PAGE_SIZE,
    ) -> AsyncIterator[list[Location]]:
        async for rows in self.history_row_pages(driver_id, since_ns, until_ns, page_size):
            yield [new_location(driver_id, *row) for row in rows]

    async def history_row_pages(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        page_size: int = HISTORY_PAGE_SIZE,
    ) -> AsyncIterator[list[HistoryRow]]:
        """Keyset pages along the primary key (driver, time), each one short query within
        the store's timeout; partitions outside the range are pruned. The next page is
        fetched while the caller works on this one."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if not await self.guard.call(lambda: self._pool.fetchval(_DRIVER_EXISTS, driver_id)):
            raise DriverNotFound(driver_id)
        if since_ns >= until_ns:
            return

        async def query(after: int) -> list[HistoryRow]:
            # Records unpack and index like the tuples of the port.
            rows: list[HistoryRow] = await self.guard.call(
                lambda: self._pool.fetch(_HISTORY_PAGE, driver_id, after, until_ns, page_size)
            )
            return rows

        pending: asyncio.Task[list[HistoryRow]] | None = asyncio.ensure_future(query(since_ns))
        try:
            while pending is not None:
                page = await pending
                pending = None
                if len(page) == page_size and (after := page[-1][4] + 1) < until_ns:
                    pending = asyncio.ensure_future(query(after))
                if page:
                    yield page
        finally:
            if pending is not None:  # the reader stopped early: the read ahead is dropped
                pending.cancel()
                pending.add_done_callback(_ignore_result)

    async def expire_history(self, before_ns: int, batch: int = 1000) -> int:
        """One step of retention, each short: drop the oldest daily partition that ends at
        or before `before_ns` (its estimated rows, at least 1), else delete up to `batch`
        such fixes from the default partition. The detach waits at most
        DETACH_LOCK_TIMEOUT_MS for the parent's lock: behind ingestion's transactions it
        gives way (the default partition's rows go meanwhile; a later step or pass drops
        the partition) instead of making every insert queue behind it. The step's time is
        added to `expiry_busy_s`."""
        started = time.perf_counter()
        try:
            return await self._expire_step(before_ns, batch)
        finally:
            self.expiry_busy_s += time.perf_counter() - started

    async def _expire_step(self, before_ns: int, batch: int) -> int:
        async with self._pool.acquire() as con:
            for name, estimate in await con.fetch(_PARTITIONS, timeout=_MAINTENANCE_TIMEOUT_S):
                if not _expired_partition(name, before_ns):
                    continue
                try:
                    # Not CONCURRENTLY: PostgreSQL refuses that beside a default partition.
                    # The plain detach takes the parent's ACCESS EXCLUSIVE lock for a moment
                    # (no rows move); the drop is outside that transaction.
                    async with con.transaction():
                        await con.execute(_DETACH_LOCK_TIMEOUT)
                        await con.execute(
                            f'ALTER TABLE location_history DETACH PARTITION "{name}"',
                            timeout=_MAINTENANCE_TIMEOUT_S,
                        )
                except asyncpg.exceptions.LockNotAvailableError:
                    break
                await con.execute(f'DROP TABLE "{name}"', timeout=_MAINTENANCE_TIMEOUT_S)
                return max(1, int(estimate))
            # A partition detached by a step that ended before its drop: drop it now.
            for (name,) in await con.fetch(_DETACHED, timeout=_MAINTENANCE_TIMEOUT_S):
                if _expired_partition(name, before_ns):
                    await con.execute(f'DROP TABLE "{name}"', timeout=_MAINTENANCE_TIMEOUT_S)
                    return 1
            status = await con.execute(
                _EXPIRE_DEFAULT, before_ns, batch, timeout=_MAINTENANCE_TIMEOUT_S
            )
        return _row_count(status)

    async def prepare_history(self, now_ns: int) -> None:
        """Make the daily partitions from yesterday to PARTITIONS_AHEAD days ahead; rows of
        such a day already in the default partition move into it."""
        today = now_ns // _DAY_NS
        async with self._pool.acquire() as con:
            for day in range(today - 1, today + PARTITIONS_AHEAD + 1):
                await self._make_partition(con, day)

    @staticmethod
    async def _make_partition(con: Any, day: int) -> None:
        name = partition_name(day)
        low, high = day * _DAY_NS, (day + 1) * _DAY_NS
        async with con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK_KEY)
            if await con.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                return
            await con.execute(
                f'CREATE TABLE "{name}" (LIKE location_history INCLUDING DEFAULTS)',
                timeout=_MAINTENANCE_TIMEOUT_S,
            )
            # `name` is made by partition_name (letters and digits), never from input.
            into = f'INSERT INTO "{name}" SELECT * FROM moved'  # noqa: S608
            move = f"WITH moved AS ({_MOVE_FROM_DEFAULT}) {into}"
            await con.execute(
                move,
                low,
                high,
                timeout=_MAINTENANCE_TIMEOUT_S,
            )
            await con.execute(
                f'ALTER TABLE location_history ATTACH PARTITION "{name}"'
                f" FOR VALUES FROM ({low}) TO ({high})",
                timeout=_MAINTENANCE_TIMEOUT_S,
            )

    async def history_stats(self) -> HistoryStats:
        async with self._pool.acquire() as con:
            rows, size = await con.fetchrow(_HISTORY_SIZE, timeout=_MAINTENANCE_TIMEOUT_S)
            oldest = await con.fetchval(_OLDEST_FIX, timeout=_MAINTENANCE_TIMEOUT_S)
        return HistoryStats(rows, size, oldest)

    async def forget_driver(self, driver_id: str) -> Forgotten:
        """History in transactions of FORGET_BATCH rows, then the driver's row together
        with any fix that arrived meanwhile."""
        if not await self.guard.call(lambda: self._pool.fetchval(_DRIVER_EXISTS, driver_id)):
            raise DriverNotFound(driver_id)
        fixes = 0
        while True:
            status = await self.guard.call(
                lambda: self._pool.execute(_FORGET_HISTORY, driver_id, FORGET_BATCH)
            )
            removed = _row_count(status)
            fixes += removed
            if removed < FORGET_BATCH:
                break

        async def last() -> tuple[int, int, int, int]:
            async with self._pool.acquire() as con, con.transaction():
                late = await con.execute(
                    "DELETE FROM location_history WHERE driver_id = $1", driver_id
                )
                # The tracker state is a column of the driver's row: it goes with it.
                tracker = await con.fetchval(
                    "DELETE FROM drivers WHERE driver_id = $1 RETURNING tracker IS NOT NULL",
                    driver_id,
                )
                events = await con.execute("DELETE FROM events WHERE driver_id = $1", driver_id)
            return (
                _row_count(late),
                0 if tracker is None else 1,
                1 if tracker else 0,
                _row_count(events),
            )

        late, records, trackers, events = await self.guard.call(last)
        return Forgotten(fixes + late, records, trackers, events)

    async def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        """Keyset pages along the primary key: one short query per page, no open cursor or
        transaction between pages (a page scans past stale rows; no index on last_seen, which
        every ingest update would have to maintain)."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        after = ""
        while True:
            page = await self._driver_page(after, seen_since_ns, page_size)
            if page:
                yield page
            if len(page) < page_size:
                return
            after = page[-1].driver_id

    async def list_drivers(self, after_id: str, limit: int) -> list[Driver]:
        """One keyset page along the primary key, bounded by the guard (a request path)."""
        return await self.guard.call(lambda: self._driver_page(after_id, _EVER, limit))

    async def _driver_page(self, after: str, seen_since_ns: int, limit: int) -> list[Driver]:
        rows = await self._pool.fetch(_SEEN_SINCE, after, seen_since_ns, limit)
        return [_driver_from_record(row) for row in rows]

    async def ping(self) -> None:
        """A write transaction (an xid is assigned, WAL is written) within the timeout,
        whatever the guard's state: a server that cannot commit (a full disk) fails it, not
        only one that is away; an answer also ends its outage."""
        await self.guard.check()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Close the pool, waiting for calls in flight; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await self.guard.close()
        try:
            await asyncio.wait_for(self._pool.close(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                self._pool.terminate()


def _ignore_result(future: asyncio.Future[Any]) -> None:
    """Retrieves the outcome of a read nobody waits for any more (no 'never retrieved')."""
    if not future.cancelled():
        future.exception()
