"""The durable ingest floor: the least any server can do to store the seed's `UploadLocations`
durably in SQLite with grpc.aio, as a reference between the bare floor (which stores nothing)
and ours: `python -m bench.servers durable --port P --data-dir D`, the `ingest` part's
"durable floor".

It reads each message and appends its six values to a list (no validation, no `Location`,
no rate limit, no pipeline); one writer thread commits what accumulated while the last commit
ran (group commit, with our writer's linger: a batch under 256 waits 1 ms, up to 4 ms while
it grows) with the rows our SQLite store writes for such an update, through its own
statements (`_insert_flat`: 64 rows a statement): the history row (`INSERT OR IGNORE`) and
each driver's newest row (`REPLACE`), in the same schema (`migrate`: the same tables and
indexes) with the same settings (WAL, `synchronous = FULL`, its `temp_store` and statement
cache). A stream is answered once its last update is committed, as ours answers. No events,
no trackers, no bus. With `--store URL` the same reader and group commit write to PostgreSQL
instead (`PostgresDurableLog`: one asyncpg connection on the loop, as our store runs).

What it tells: if this server is below a target ratio to the bare floor, no code of ours on
this runtime and store can reach it; the gap between it and ours is what our code costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from bench.servers import until_terminated
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.postgres.repository import _INSERT_HISTORY_UNNEST
from driver_service.adapters.postgres.schema import migrate as pg_migrate
from driver_service.adapters.sqlite.repository import (
    STATEMENT_CACHE,
    TEMP_STORE,
    _driver_replace,
    _history_insert,
    _insert_flat,
)
from driver_service.adapters.sqlite.schema import migrate
from driver_service.app.writer import LINGER_BELOW, LINGER_S, LINGER_STEPS
from driver_service.server.heap import settle_heap

Row = tuple[str, int, float, float, float, float]


class DurableLog:
    """Group commit: the loop hands over what built up whenever no commit is running (after
    the writer's linger); `_commit` stores one batch in one transaction."""

    def __init__(self) -> None:
        self.pending: list[Row] = []
        self.in_flight = False
        self.lingering = False
        self.appended = 0
        self.committed = 0
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []

    def add(self, row: Row) -> None:
        self.pending.append(row)
        self.appended += 1
        if not self.in_flight and not self.lingering:
            self._linger(0, 0)

    def _linger(self, steps: int, size: int) -> None:
        """Flush now if the batch is big, stopped growing or lingered LINGER_STEPS times."""
        grown = len(self.pending)
        if grown >= LINGER_BELOW or steps >= LINGER_STEPS or (steps and grown == size):
            self.lingering = False
            self._flush()
            return
        self.lingering = True
        asyncio.get_running_loop().call_later(LINGER_S, self._linger, steps + 1, grown)

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self.in_flight = True
        upto = self.appended
        done = asyncio.ensure_future(self._commit(batch))
        done.add_done_callback(lambda _: self._done(upto))

    def _done(self, upto: int) -> None:
        self.in_flight = False
        self.committed = upto
        still = []
        for at, waiter in self.waiters:
            if at <= upto:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((at, waiter))
        self.waiters = still
        if self.pending and not self.lingering:
            self._linger(0, 0)

    async def wait_for(self, appended: int) -> None:
        if self.committed >= appended:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append((appended, waiter))
        await waiter

    async def _commit(self, batch: list[Row]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def _newest(batch: list[Row]) -> list[Row]:
    """Each driver's last row of the batch (its newest: a stream's fixes go forward)."""
    newest: dict[str, Row] = {}
    for row in batch:
        newest[row[0]] = row
    return list(newest.values())


class SqliteDurableLog(DurableLog):
    """Into SQLite, on one writer thread (the event loop must not block on a commit)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=STATEMENT_CACHE
        )
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = FULL")
        migrate(self.connection)
        self.connection.execute(f"PRAGMA temp_store = {TEMP_STORE}")
        self.executor = ThreadPoolExecutor(1)

    async def _commit(self, batch: list[Row]) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self._write, batch)

    def _write(self, batch: list[Row]) -> None:
        """One transaction: the history rows and each driver's newest row, flattened and
        inserted with our store's own statements (`_insert_flat`: 64-row statements)."""
        con = self.connection
        history: list[object] = [value for row in batch for value in row]
        drivers: list[object] = []
        for d, at, lat, lon, speed, heading in _newest(batch):
            drivers += (d, "AVAILABLE", lat, lon, speed, heading, at, at)
        con.execute("BEGIN")
        _insert_flat(con, _history_insert, history, 6)
        _insert_flat(con, _driver_replace, drivers, 8)
        con.execute("COMMIT")

    async def close(self) -> None:
        self.executor.shutdown()
        self.connection.close()


#: The PostgreSQL floor's statements: the history rows as our store inserts them
#: (`_INSERT_HISTORY_UNNEST`), and each driver's newest row upserted only if it is newer (so
#: a driver never moves back, as ours guarantees with its row locks).
PG_DRIVERS = (
    "INSERT INTO drivers AS d (driver_id, status, latitude, longitude, speed_mps,"
    " heading_degrees, location_at_ns, last_seen_at_ns)"
    " SELECT u.driver_id, 'AVAILABLE', u.latitude, u.longitude, u.speed_mps,"
    " u.heading_degrees, u.at_ns, u.at_ns FROM unnest($1::text[], $2::float8[], $3::float8[],"
    " $4::float8[], $5::float8[], $6::int8[]) AS u(driver_id, latitude, longitude, speed_mps,"
    " heading_degrees, at_ns) ORDER BY u.driver_id"
    " ON CONFLICT (driver_id) DO UPDATE SET latitude = excluded.latitude,"
    " longitude = excluded.longitude, speed_mps = excluded.speed_mps,"
    " heading_degrees = excluded.heading_degrees, location_at_ns = excluded.location_at_ns,"
    " last_seen_at_ns = greatest(d.last_seen_at_ns, excluded.last_seen_at_ns)"
    " WHERE d.location_at_ns IS NULL OR d.location_at_ns < excluded.location_at_ns"
)


class PostgresDurableLog(DurableLog):
    """Into PostgreSQL, on one asyncpg connection on the event loop (as our store runs)."""

    def __init__(self, connection: Any) -> None:
        super().__init__()
        self.pg = connection

    async def _commit(self, batch: list[Row]) -> None:
        ids, at, lat, lon, speed, heading = (list(c) for c in zip(*batch, strict=True))
        d_ids, d_at, d_lat, d_lon, d_speed, d_heading = (
            list(c) for c in zip(*sorted(_newest(batch)), strict=True)
        )
        async with self.pg.transaction():
            await self.pg.execute(_INSERT_HISTORY_UNNEST, ids, lat, lon, speed, heading, at)
            await self.pg.execute(PG_DRIVERS, d_ids, d_lat, d_lon, d_speed, d_heading, d_at)

    async def close(self) -> None:
        await self.pg.close()


class DurableServicer(pb_grpc.DriverServiceServicer):
    def __init__(self, log: DurableLog) -> None:
        self.log = log

    async def UploadLocations(  # noqa: N802
        self, request_iterator: Any, context: Any
    ) -> pb.UploadSummary:
        received = 0
        add = self.log.add
        async for msg in request_iterator:
            ts = msg.timestamp
            add(
                (
                    msg.driver_id,
                    ts.seconds * 1_000_000_000 + ts.nanos,
                    msg.latitude,
                    msg.longitude,
                    msg.speed_mps,
                    msg.heading_degrees,
                )
            )
            received += 1
        await self.log.wait_for(self.log.appended)
        return pb.UploadSummary(received_count=received, persisted_count=received)


async def run_durable(args: argparse.Namespace) -> None:
    """The SQLite floor in --data-dir, or with --store the PostgreSQL floor there (its schema
    made by our migrations)."""
    log: DurableLog
    if args.store:
        import asyncpg  # type: ignore[import-untyped]

        connection = await asyncpg.connect(args.store)
        await pg_migrate(connection)
        log = PostgresDurableLog(connection)
    else:
        log = SqliteDurableLog(Path(args.data_dir) / "driver-service.sqlite3")
    server = grpc.aio.server()
    pb_grpc.add_DriverServiceServicer_to_server(DurableServicer(log), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    settle_heap()
    await until_terminated()
    await server.stop(0)
    await log.close()
