"""Versioned PostgreSQL schema: `schema_migrations` records each applied version, and migrations
run under an advisory lock so replicas starting at once never apply one twice."""

from __future__ import annotations

from typing import Any

# Append new migrations; never edit one that has shipped. Each runs in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    # 1: current state per driver, and idempotent history keyed by driver and fix time; the
    # primary key (driver_id, recorded_at_ns) is the index for driver + time range queries.
    """
    CREATE TABLE drivers (
        driver_id        text             PRIMARY KEY,
        status           text             NOT NULL
                         CHECK (status IN ('AVAILABLE', 'BUSY', 'OFFLINE')),
        latitude         double precision,
        longitude        double precision,
        speed_mps        double precision,
        heading_degrees  double precision,
        location_at_ns   bigint,
        last_seen_at_ns  bigint           NOT NULL
    );
    CREATE TABLE location_history (
        driver_id        text             NOT NULL,
        recorded_at_ns   bigint           NOT NULL,
        latitude         double precision NOT NULL,
        longitude        double precision NOT NULL,
        speed_mps        double precision NOT NULL,
        heading_degrees  double precision NOT NULL,
        PRIMARY KEY (driver_id, recorded_at_ns)
    );
    """,
    # 2: zones (a deleted zone stays as a tombstone: ids are never reused), the zones version
    # (one row, +1 with every zone change: evaluators reload when it moves), each driver's
    # event tracker state (beside the row every location commit locks), and the event log
    # (the outbox, written in the transaction of the update that caused each event; ids are
    # taken under a transaction-scoped advisory lock, so they follow commit order).
    """
    CREATE TABLE zones (
        zone_id        text    PRIMARY KEY,
        name           text    NOT NULL,
        labels         text    NOT NULL,
        shape          text    NOT NULL,
        dwell_ns       bigint  NOT NULL,
        version        bigint  NOT NULL,
        created_at_ns  bigint  NOT NULL,
        updated_at_ns  bigint  NOT NULL,
        deleted        boolean NOT NULL DEFAULT false
    );
    CREATE TABLE zones_version (
        id       integer PRIMARY KEY CHECK (id = 1),
        version  bigint  NOT NULL
    );
    INSERT INTO zones_version (id, version) VALUES (1, 0);
    ALTER TABLE drivers ADD COLUMN tracker text;
    CREATE TABLE events (
        id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        type            text    NOT NULL,
        driver_id       text    NOT NULL,
        zone_id         text    NOT NULL,
        at_ns           bigint  NOT NULL,
        recorded_at_ns  bigint  NOT NULL,
        body            text    NOT NULL
    );
    """,
    # 3: history range-partitioned by fix time, one partition per UTC day, so that retention
    # drops whole days (no DELETE, no vacuum debt on the hot table). The server makes the
    # partitions of the coming days ahead (PostgresRepository.prepare_history); a fix outside
    # every daily partition lands in the default one and moves to its day's partition when
    # that is made. Existing rows move into the daily partitions of their days.
    """
    ALTER TABLE location_history RENAME TO location_history_unpartitioned;
    ALTER TABLE location_history_unpartitioned
        RENAME CONSTRAINT location_history_pkey TO location_history_unpartitioned_pkey;
    CREATE TABLE location_history (
        driver_id        text             NOT NULL,
        recorded_at_ns   bigint           NOT NULL,
        latitude         double precision NOT NULL,
        longitude        double precision NOT NULL,
        speed_mps        double precision NOT NULL,
        heading_degrees  double precision NOT NULL,
        PRIMARY KEY (driver_id, recorded_at_ns)
    ) PARTITION BY RANGE (recorded_at_ns);
    CREATE TABLE location_history_default PARTITION OF location_history DEFAULT;
    DO $$
    DECLARE
        day bigint;
    BEGIN
        FOR day IN
            SELECT DISTINCT recorded_at_ns / 86400000000000 FROM location_history_unpartitioned
            WHERE recorded_at_ns >= 0
        LOOP
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF location_history FOR VALUES FROM (%s) TO (%s)',
                'location_history_d' || to_char(to_timestamp(day * 86400) AT TIME ZONE 'UTC',
                                                'YYYYMMDD'),
                day * 86400000000000, (day + 1) * 86400000000000);
        END LOOP;
    END $$;
    INSERT INTO location_history SELECT * FROM location_history_unpartitioned;
    DROP TABLE location_history_unpartitioned;
    """,
    # 4: webhook endpoints with their delivery state (cursor: the last event id done with;
    # the head item's attempts; failures in a row for the circuit; a lease naming the replica
    # that delivers for it, taken with FOR UPDATE SKIP LOCKED) and dead letters.
    """
    CREATE TABLE webhook_endpoints (
        endpoint_id           text    PRIMARY KEY,
        url                   text    NOT NULL,
        types                 text    NOT NULL,
        zone_ids              text    NOT NULL,
        driver_ids            text    NOT NULL,
        secret                text    NOT NULL,
        previous_secret       text    NOT NULL DEFAULT '',
        previous_until_ns     bigint  NOT NULL DEFAULT 0,
        created_at_ns         bigint  NOT NULL,
        paused                boolean NOT NULL DEFAULT false,
        cursor                bigint  NOT NULL,
        attempts              integer NOT NULL DEFAULT 0,
        first_failure_ns      bigint  NOT NULL DEFAULT 0,
        next_attempt_ns       bigint  NOT NULL DEFAULT 0,
        consecutive_failures  integer NOT NULL DEFAULT 0,
        last_error            text    NOT NULL DEFAULT '',
        lease_owner           text    NOT NULL DEFAULT '',
        lease_until_ns        bigint  NOT NULL DEFAULT 0
    );
    CREATE TABLE webhook_dead_letters (
        endpoint_id   text    NOT NULL,
        event_id      bigint  NOT NULL,
        event_type    text    NOT NULL,
        attempts      integer NOT NULL,
        last_error    text    NOT NULL,
        failed_at_ns  bigint  NOT NULL,
        replaying     boolean NOT NULL DEFAULT false,
        PRIMARY KEY (endpoint_id, event_id)
    );
    """,
    # 5: each polygon zone's geometry and hysteresis band as WKB beside its GeoJSON, so loading
    # the zones (start-up) skips parsing and buffering them (NULL: built from the GeoJSON).
    """
    ALTER TABLE zones ADD COLUMN prepared bytea;
    """,
    # 6: the drivers online, for the offline sweep (its candidates: WHERE last_seen_at_ns < $1
    # AND tracker LIKE '%"online":true%'): a partial index of just those rows instead of a
    # scan of every driver. It names the tracker, not last_seen_at_ns, so a location commit
    # that moves only the times (most: the tracker state is written only when its visits,
    # status or online flag change) can stay a HOT update.
    """
    CREATE INDEX drivers_online ON drivers (driver_id) WHERE tracker LIKE '%"online":true%';
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

#: pg_advisory_lock key shared by every driver-service process migrating one database
#: (the bytes of "drvmigr1" as a signed 64-bit integer).
MIGRATION_LOCK_KEY = int.from_bytes(b"drvmigr1", "big", signed=True)

_CREATE_MIGRATIONS_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version     integer     PRIMARY KEY,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
"""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release; refusing to run rather than corrupt it."""


class SchemaNotMigrated(RuntimeError):
    """The database lacks migrations this release needs; run `driver-service migrate`."""


async def current_version(connection: Any) -> int:
    """The newest applied version, 0 for an empty database."""
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version: int | None = await connection.fetchval("SELECT max(version) FROM schema_migrations")
    return version or 0


async def migrate(connection: Any) -> list[int]:
    """Apply pending migrations on an asyncpg connection; return the versions applied now.

    The session-level advisory lock serializes concurrent migrators (it is released at the
    end, or by the server if this connection dies); whoever waits then finds nothing to do.
    """
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(_CREATE_MIGRATIONS_TABLE)
        current = await current_version(connection)
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema version {current} is newer than this release ({SCHEMA_VERSION})"
            )
        applied: list[int] = []
        for version in range(current + 1, SCHEMA_VERSION + 1):
            async with connection.transaction():
                await connection.execute(MIGRATIONS[version - 1])
                await connection.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)", version
                )
            applied.append(version)
        return applied
    finally:
        if not connection.is_closed():  # a lost connection has released the lock already
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def check(connection: Any) -> None:
    """Raise unless the database is at exactly this release's schema version (used when the
    server starts without migrating)."""
    current = await current_version(connection)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this release ({SCHEMA_VERSION})"
        )
    if current < SCHEMA_VERSION:
        raise SchemaNotMigrated(
            f"database schema version {current} is older than this release ({SCHEMA_VERSION});"
            " run `driver-service migrate --store postgresql://...` first"
        )
