"""Versioned SQLite schema; `PRAGMA user_version` records the last migration applied."""

from __future__ import annotations

import sqlite3

# Append new migrations; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    # 1: current state per driver, and idempotent history keyed by driver and fix time.
    """
    CREATE TABLE drivers (
        driver_id        TEXT    PRIMARY KEY,
        status           TEXT    NOT NULL,
        latitude         REAL,
        longitude        REAL,
        speed_mps        REAL,
        heading_degrees  REAL,
        location_at_ns   INTEGER,
        last_seen_at_ns  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE location_history (
        driver_id        TEXT    NOT NULL,
        recorded_at_ns   INTEGER NOT NULL,
        latitude         REAL    NOT NULL,
        longitude        REAL    NOT NULL,
        speed_mps        REAL    NOT NULL,
        heading_degrees  REAL    NOT NULL,
        PRIMARY KEY (driver_id, recorded_at_ns)
    ) WITHOUT ROWID;
    """,
    # 2: history clustered by fix time, not by driver. Fixes arrive roughly in time order, so
    # a commit appends to the last pages of the tree; keyed by driver first, every update of
    # a large history dirtied a page of its own (a 4 KiB WAL write per update: ~25 us of CPU
    # at 1M rows, measured). Uniqueness of (driver, timestamp) is unchanged. A driver's
    # history is read by scanning its time window (no RPC reads history; ingest dominates).
    """
    CREATE TABLE location_history_by_time (
        driver_id        TEXT    NOT NULL,
        recorded_at_ns   INTEGER NOT NULL,
        latitude         REAL    NOT NULL,
        longitude        REAL    NOT NULL,
        speed_mps        REAL    NOT NULL,
        heading_degrees  REAL    NOT NULL,
        PRIMARY KEY (recorded_at_ns, driver_id)
    ) WITHOUT ROWID;
    INSERT INTO location_history_by_time
        SELECT driver_id, recorded_at_ns, latitude, longitude, speed_mps, heading_degrees
        FROM location_history ORDER BY recorded_at_ns, driver_id;
    DROP TABLE location_history;
    ALTER TABLE location_history_by_time RENAME TO location_history;
    """,
    # 3: small facts about the store itself; health writes a probe row here, so that a store
    # that cannot commit (a full disk) reports NOT_SERVING even while no update arrives.
    """
    CREATE TABLE service_meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 4: zones (a deleted zone stays as a tombstone: ids are never reused), the zones version
    # (one row, +1 with every zone change: evaluators reload when it moves), each driver's
    # event tracker state, and the event log (the outbox, written in the transaction of the
    # update that caused each event; AUTOINCREMENT: ids only grow, even after deletes).
    """
    CREATE TABLE zones (
        zone_id        TEXT    PRIMARY KEY,
        name           TEXT    NOT NULL,
        labels         TEXT    NOT NULL,
        shape          TEXT    NOT NULL,
        dwell_ns       INTEGER NOT NULL,
        version        INTEGER NOT NULL,
        created_at_ns  INTEGER NOT NULL,
        updated_at_ns  INTEGER NOT NULL,
        deleted        INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE zones_version (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        version  INTEGER NOT NULL
    );
    INSERT INTO zones_version (id, version) VALUES (1, 0);
    CREATE TABLE driver_trackers (
        driver_id  TEXT PRIMARY KEY,
        state      TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        type            TEXT    NOT NULL,
        driver_id       TEXT    NOT NULL,
        zone_id         TEXT    NOT NULL,
        at_ns           INTEGER NOT NULL,
        recorded_at_ns  INTEGER NOT NULL,
        body            TEXT    NOT NULL
    );
    """,
    # 5: history read by driver (HistoryService): the fixes of one driver in a time range
    # without scanning every driver's fixes of that range. The entries hold the key only
    # (driver, time); the row is then found by its primary key (time, driver).
    """
    CREATE INDEX location_history_by_driver ON location_history (driver_id, recorded_at_ns);
    """,
    # 6: webhook endpoints with their delivery state (cursor: the last event id done with;
    # the head item's attempts; the circuit's failures in a row; a lease naming the owner
    # that delivers for it) and dead letters (set aside after the last attempt; `replaying`
    # once an operator queued them again).
    """
    CREATE TABLE webhook_endpoints (
        endpoint_id           TEXT    PRIMARY KEY,
        url                   TEXT    NOT NULL,
        types                 TEXT    NOT NULL,
        zone_ids              TEXT    NOT NULL,
        driver_ids            TEXT    NOT NULL,
        secret                TEXT    NOT NULL,
        previous_secret       TEXT    NOT NULL DEFAULT '',
        previous_until_ns     INTEGER NOT NULL DEFAULT 0,
        created_at_ns         INTEGER NOT NULL,
        paused                INTEGER NOT NULL DEFAULT 0,
        cursor                INTEGER NOT NULL,
        attempts              INTEGER NOT NULL DEFAULT 0,
        first_failure_ns      INTEGER NOT NULL DEFAULT 0,
        next_attempt_ns       INTEGER NOT NULL DEFAULT 0,
        consecutive_failures  INTEGER NOT NULL DEFAULT 0,
        last_error            TEXT    NOT NULL DEFAULT '',
        lease_owner           TEXT    NOT NULL DEFAULT '',
        lease_until_ns        INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE webhook_dead_letters (
        endpoint_id   TEXT    NOT NULL,
        event_id      INTEGER NOT NULL,
        event_type    TEXT    NOT NULL,
        attempts      INTEGER NOT NULL,
        last_error    TEXT    NOT NULL,
        failed_at_ns  INTEGER NOT NULL,
        replaying     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (endpoint_id, event_id)
    ) WITHOUT ROWID;
    """,
    # 7: each polygon zone's geometry and hysteresis band as WKB beside its GeoJSON, so loading
    # the zones (start-up) skips parsing and buffering them (NULL: built from the GeoJSON).
    """
    ALTER TABLE zones ADD COLUMN prepared BLOB;
    """,
    # 8: the event log by driver: WatchEvents and the HTTP events route filtered by driver, and
    # erasing a driver (DELETE ... WHERE driver_id), read its events without a scan of the log.
    """
    CREATE INDEX events_by_driver ON events (driver_id, id);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The file was written by a newer release; refusing to run rather than corrupt it."""


def migrate(connection: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction; return the resulting version."""
    (current,) = connection.execute("PRAGMA user_version").fetchone()
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this release ({SCHEMA_VERSION})"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
