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
