"""SQLite DriverRepository: one file, WAL, synchronous=FULL, one writer thread, state in memory.

Reads of current state come from an in-memory mirror that is updated only after a
commit succeeds, so GetDriver never touches the disk and never sees uncommitted data.
The data directory is locked: two servers on one file would each trust a stale mirror.

With an `EventEvaluator`, every location and status commit also derives events from the
updates that advanced (the transactional outbox): the drivers' tracker states and the events
are written in the same transaction, so an acknowledged update never loses its events. One
writer thread: event ids follow commit order, and each commit hands the events it logged
to the evaluator's listeners (`EventEvaluator.logged`) once it is done.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from driver_service.adapters.sqlite._thread import StoreThread
from driver_service.adapters.sqlite.schema import migrate
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
    EventType,
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

T = TypeVar("T")

_HISTORY_COLUMNS = (
    "INSERT OR IGNORE INTO location_history (driver_id, recorded_at_ns, latitude, longitude,"
    " speed_mps, heading_degrees) VALUES "
)
_DRIVER_COLUMNS = (
    "INTO drivers (driver_id, status, latitude, longitude, speed_mps, heading_degrees,"
    " location_at_ns, last_seen_at_ns) VALUES "
)
_STORED_FIXES_HEAD = (
    "SELECT h.driver_id, h.latitude, h.longitude, h.speed_mps, h.heading_degrees,"
    " h.recorded_at_ns FROM (VALUES "
)
_STORED_FIXES_TAIL = (
    ") AS k CROSS JOIN location_history AS h"
    " ON h.recorded_at_ns = k.column1 AND h.driver_id = k.column2"
)
_HISTORY_WIDTH = 6
_DRIVER_WIDTH = 8
#: Rows per INSERT statement. One statement of many rows costs far less than executemany
#: of one row each (~1.3 against ~3.4 us per history row, measured); 64 rows of 8 values
#: stay well under any build's limit on bound parameters.
ROWS_PER_STATEMENT = 64


#: Prepared statements kept by the connection. A commit's remainder statements come in every
#: size up to ROWS_PER_STATEMENT (history, drivers, events, stored fixes: ~4 x 64 texts), past
#: pysqlite's default of 128: with commits of varying size (one stream: 10-100 updates) it
#: prepared a 64-row INSERT again every few commits (~0.8k instructions an update).
STATEMENT_CACHE = 512

#: Where the connection keeps temporary data, chiefly each multi-row statement's journal (the
#: pages it changes, so that it can be undone alone if it fails; not needed after a crash, so
#: durability is untouched). SQLite's default keeps it in memory up to 64 KiB and then in a
#: temporary file, two write(2) calls a page: a statement of rows far apart in the history's
#: by-driver index (many streams, or drivers in no order) passed that and cost ~3 writes an
#: update (50 streams: 4.2 against 0.4 write calls an update; ~4 us of the writer's system
#: time). In memory, a 64-row statement's journal is ~1 MiB at most, freed at its end.
TEMP_STORE = "MEMORY"

_PROBE = (
    "INSERT INTO service_meta (key, value) VALUES ('health_probe', ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


@functools.cache
def _history_insert(rows: int) -> str:
    """History rows, a row whose key is stored already skipped. `OR IGNORE` where `ON
    CONFLICT DO NOTHING` skips the same rows (the key is all it can refuse: every value is a
    validated finite number or id, so NOT NULL never fires), but a statement that cannot
    abort keeps no statement journal: that journal copied every page the statement changed
    (~10k instructions an update with 50 streams' rows far apart; see TEMP_STORE)."""
    values = ",".join(["(?,?,?,?,?,?)"] * rows)
    return f"{_HISTORY_COLUMNS}{values}"


@functools.cache
def _stored_fixes(keys: int) -> str:
    """The stored fixes of `keys` (time, driver) pairs: a join, so each is a primary-key
    search (a row-value IN list scans the table)."""
    values = ",".join(["(?,?)"] * keys)
    return f"{_STORED_FIXES_HEAD}{values}{_STORED_FIXES_TAIL}"


@functools.cache
def _event_insert(rows: int) -> str:
    """Events in rows of ROWS_PER_STATEMENT, as history: ids follow the rows' order."""
    return _EVENT_COLUMNS + ",".join(["(?,?,?,?,?,?)"] * rows)


@functools.cache
def _driver_replace(rows: int) -> str:
    """Whole driver rows, each replacing the stored one: a row is nothing but these columns
    (no trigger, no foreign key), so REPLACE leaves what an upsert setting every column
    would, for ~1.6k fewer instructions a row (callgrind, 10,000 drivers)."""
    values = ",".join(["(?,?,?,?,?,?,?,?)"] * rows)
    return f"REPLACE {_DRIVER_COLUMNS}{values}"


def _insert_flat(
    con: sqlite3.Connection, statement: Callable[[int], str], values: list[object], width: int
) -> None:
    """Insert rows given as one flat list of `width` values each, ROWS_PER_STATEMENT rows
    per statement (the remainder in one shorter statement)."""
    step = ROWS_PER_STATEMENT * width
    full = len(values) - len(values) % step
    if full:
        con.executemany(
            statement(ROWS_PER_STATEMENT), [values[i : i + step] for i in range(0, full, step)]
        )
    if full < len(values):
        con.execute(statement((len(values) - full) // width), values[full:])


_SEEN_SINCE = (
    "SELECT driver_id, status, latitude, longitude, speed_mps, heading_degrees,"
    " location_at_ns, last_seen_at_ns FROM drivers WHERE driver_id > ? AND last_seen_at_ns >= ?"
    " ORDER BY driver_id LIMIT ?"
)

#: A `seen_since` before every driver's last event: the whole fleet.
_EVER = -(2**63)
#: Zone ids per `IN (...)` read when a few zones changed.
_ZONES_PER_READ = 500
_ZONE_COLUMNS = (
    "zone_id, name, labels, shape, dwell_ns, version, created_at_ns, updated_at_ns, prepared"
)
_TRACKER_COLUMNS = "REPLACE INTO driver_trackers (driver_id, state) VALUES "
_TRACKER_WIDTH = 2


@functools.cache
def _tracker_replace(rows: int) -> str:
    """Tracker states, each replacing the stored one, in rows of ROWS_PER_STATEMENT (a
    first fix writes one per update): the table is nothing but these columns (no trigger,
    no foreign key), so REPLACE leaves what an upsert would (see _driver_replace)."""
    return _TRACKER_COLUMNS + ",".join(["(?,?)"] * rows)


_EVENT_COLUMNS = (
    "INSERT INTO events (type, driver_id, zone_id, at_ns, recorded_at_ns, body) VALUES "
)
_EVENT_WIDTH = 6
#: The first event (by id) to keep: the oldest recorded at or after the cutoff.
_FIRST_KEPT_EVENT = "SELECT id FROM events WHERE recorded_at_ns >= ? ORDER BY id LIMIT 1"
_EXPIRE_EVENTS = (
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < ? ORDER BY id LIMIT ?)"
)
_EVENTS_AFTER = (
    "SELECT id, type, driver_id, zone_id, at_ns, recorded_at_ns, body FROM events"
    " WHERE id > ? ORDER BY id LIMIT ?"
)
_HISTORY_PAGE = (
    "SELECT latitude, longitude, speed_mps, heading_degrees, recorded_at_ns"
    " FROM location_history INDEXED BY location_history_by_driver"
    " WHERE driver_id = ? AND recorded_at_ns >= ? AND recorded_at_ns < ?"
    " ORDER BY recorded_at_ns LIMIT ?"
)
# Oldest first along the primary key (time first): each batch is a short range at the
# left edge of the tree, found without a scan.
_EXPIRE = (
    "DELETE FROM location_history WHERE (recorded_at_ns, driver_id) IN"
    " (SELECT recorded_at_ns, driver_id FROM location_history WHERE recorded_at_ns < ?"
    " ORDER BY recorded_at_ns LIMIT ?)"
)
_FORGET_HISTORY = (
    "DELETE FROM location_history WHERE driver_id = ? AND recorded_at_ns IN"
    " (SELECT recorded_at_ns FROM location_history INDEXED BY location_history_by_driver"
    " WHERE driver_id = ? ORDER BY recorded_at_ns LIMIT ?)"
)
#: Rows one erasure transaction deletes before the writer thread takes the next commit.
FORGET_BATCH = 10_000

#: Status.value goes through enum's descriptor machinery (~1.5 us here); a dict does not.
_STATUS_TEXT = {status: status.value for status in Status}
_TYPE_TEXT = {kind: kind.value for kind in EventType}


class StoreLocked(RuntimeError):
    """Another process holds this data directory."""


def _driver_row(driver: Driver) -> tuple[object, ...]:
    loc = driver.location
    if loc is None:
        return (
            driver.driver_id,
            driver.status.value,
            None,
            None,
            None,
            None,
            None,
            driver.last_seen_at_ns,
        )
    return (
        driver.driver_id,
        driver.status.value,
        loc.latitude,
        loc.longitude,
        loc.speed_mps,
        loc.heading_degrees,
        loc.recorded_at_ns,
        driver.last_seen_at_ns,
    )


def _driver_from_row(row: tuple[Any, ...]) -> Driver:
    driver_id, status, lat, lon, speed, heading, at_ns, last_seen = row
    location = None
    if at_ns is not None:
        location = new_location(driver_id, lat, lon, speed, heading, at_ns)
    return new_driver(driver_id, Status(status), location, last_seen)


class SqliteRepository:
    """DriverRepository on one SQLite file. Create with `await SqliteRepository.open(path)`."""

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        lock: IO[bytes],
        thread: StoreThread,
        drivers: dict[str, Driver],
        trackers: dict[str, TrackerState] | None = None,
        evaluator: EventEvaluator | None = None,
    ) -> None:
        self.path = path
        self._connection = connection
        self._lock = lock
        self._thread = thread
        self._drivers = drivers
        self._trackers: dict[str, TrackerState] = trackers or {}
        self._evaluator = evaluator
        #: The stored zones version, known since this process last read it: only this process
        #: changes zones (the data directory is locked), and each change forgets it (None), so
        #: a location commit reads it only after a zone change, not every time.
        self._zones_version: int | None = None
        self._closed = False
        #: Rows of history, counted once at open and kept by every insert and delete (a
        #: count(*) would scan the table on the writer thread).
        self.history_rows = 0
        #: Seconds spent on expiry steps (HistoryStore.expiry_busy_s: retention's pace).
        self.expiry_busy_s = 0.0

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], evaluator: EventEvaluator | None = None
    ) -> SqliteRepository:
        db_path = Path(path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock_file(db_path.with_name(db_path.name + ".lock"))
        thread = StoreThread("sqlite")
        try:
            connection, drivers, trackers = await thread.submit(lambda: _connect_and_load(db_path))
        except BaseException:
            thread.shutdown(wait=False)
            lock.close()
            raise
        repository = cls(db_path, connection, lock, thread, drivers, trackers, evaluator)
        repository.history_rows = await repository._run(
            lambda: int(connection.execute("SELECT count(*) FROM location_history").fetchone()[0])
        )
        return repository

    async def _run(self, fn: Callable[[], T]) -> T:
        return await self._thread.submit(fn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the writer thread with the connection (for the other stores that
        share this file: webhooks)."""
        return await self._run(lambda: fn(self._connection))

    async def run_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one write transaction on the writer thread; return its value."""
        return await self._run(lambda: self._transaction_value(fn))

    def transaction(self, body: Callable[[sqlite3.Connection], object]) -> None:
        """One write transaction; call only on the writer thread (inside `run`)."""
        self._transaction(body)

    async def get_driver(self, driver_id: str) -> Driver | None:
        return self._drivers.get(driver_id)

    @property
    def current_driver(self) -> Callable[[str], Driver | None]:
        """`get_driver` without a wait: this file's drivers are all in memory, and each
        is replaced there once its commit is done (one process holds the file)."""
        return self._drivers.get

    def driver_count(self) -> int:
        return len(self._drivers)

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        recorded, logged = await self._run(lambda: self._record_locations(locations))
        self._hand_over(logged)
        return recorded

    def _hand_over(self, logged: list[LoggedEvent]) -> None:
        """Give the events a commit logged to the evaluator's listeners (in the event loop's
        thread, after the commit: a rolled-back transaction returns none)."""
        if logged and self._evaluator is not None:
            self._evaluator.logged(logged)

    def _driver_rows(self, newest: dict[str, Location]) -> tuple[dict[str, Driver], list[object]]:
        """Each driver as it will be after the commit, and its row (flattened)."""
        drivers = self._drivers
        changed: dict[str, Driver] = {}
        rows: list[object] = []
        for driver_id, loc in newest.items():
            at_ns = loc.recorded_at_ns
            current = drivers.get(driver_id)
            if current is None:
                driver = new_driver(driver_id, INITIAL_STATUS, loc, at_ns)
            else:
                seen = current.last_seen_at_ns
                driver = new_driver(driver_id, current.status, loc, seen if seen > at_ns else at_ns)
            changed[driver_id] = driver
            rows.extend(
                (
                    driver_id,
                    _STATUS_TEXT[driver.status],
                    loc.latitude,
                    loc.longitude,
                    loc.speed_mps,
                    loc.heading_degrees,
                    at_ns,
                    driver.last_seen_at_ns,
                )
            )
        return changed, rows

    def _record_locations(
        self, locations: Sequence[Location]
    ) -> tuple[Recorded, list[LoggedEvent]]:
        # One pass in Python: the newest fix per driver, and the fixes that advanced their
        # driver (in order, for the bus); then one Driver and one row per driver.
        drivers = self._drivers
        newest: dict[str, Location] = {}
        advanced: list[Location] = []
        history: list[object] = []
        extend = history.extend
        for loc in locations:
            driver_id = loc.driver_id
            at_ns = loc.recorded_at_ns
            extend(
                (driver_id, at_ns, loc.latitude, loc.longitude, loc.speed_mps, loc.heading_degrees)
            )
            previous = newest.get(driver_id)
            if previous is None:
                current = drivers.get(driver_id)
                if current is not None:
                    current_loc = current.location
                    if current_loc is not None and at_ns <= current_loc.recorded_at_ns:
                        continue  # older than the current fix: history only
            elif at_ns <= previous.recorded_at_ns:
                continue
            newest[driver_id] = loc
            advanced.append(loc)
        changed, rows = self._driver_rows(newest)

        conflicts: tuple[Location, ...] = ()
        evaluator = self._evaluator
        states: dict[str, TrackerState] = {}
        logged: list[LoggedEvent] = []
        inserted = 0

        def body(con: sqlite3.Connection) -> None:
            nonlocal conflicts, states, logged, inserted
            before = con.total_changes
            _insert_flat(con, _history_insert, history, _HISTORY_WIDTH)
            inserted = con.total_changes - before
            if inserted < len(locations):  # duplicate keys: rare
                conflicts = self._conflicts(con, locations)
            _insert_flat(con, _driver_replace, rows, _DRIVER_WIDTH)
            if evaluator is not None and advanced:
                self._sync_zones(con, evaluator)
                prior, evaluated = self._to_evaluate(evaluator, newest, advanced)
                if evaluated:
                    states, events = evaluator.on_locations(prior, evaluated)
                    logged = self._write_events(con, states, events)

        self._transaction(body)
        drivers.update(changed)
        self._trackers.update(states)
        self.history_rows += inserted
        return Recorded(advanced, conflicts), logged

    def _to_evaluate(
        self, evaluator: EventEvaluator, newest: dict[str, Location], advanced: list[Location]
    ) -> tuple[dict[str, TrackerState], list[Location]]:
        """The advanced drivers' states before this commit and the fixes to evaluate. A driver
        with a fix whose every newer fix moves only its fix and last-seen times (`times_only`:
        most of them, with no zone) is left out, as on PostgreSQL: its state would not be
        written (see _write_events) and it logs nothing. Its state here then keeps the times
        of its last evaluation; its row has the current ones (`_current_state`)."""
        trackers = self._trackers
        moves_times_only = evaluator.times_only
        states: dict[str, TrackerState] = {}
        still: set[str] = set()
        for driver_id in newest:
            state = trackers.get(driver_id)
            if state is None:
                continue
            # A state has a fix time once a fix of its driver was evaluated (and keeps it).
            if state.last_fix_ns is not None and moves_times_only(state):
                still.add(driver_id)
            else:
                states[driver_id] = self._current_state(driver_id, state)
        if still:
            advanced = [loc for loc in advanced if loc.driver_id not in still]
        return states, advanced

    def _current_state(self, driver_id: str, state: TrackerState) -> TrackerState:
        """`state` with its driver's fix and last-seen times as its row holds them (those of
        its newest fix and last sighting, as every commit writes them; see _to_evaluate)."""
        driver = self._drivers.get(driver_id)
        if driver is None:
            return state
        loc = driver.location
        fix_ns = None if loc is None else loc.recorded_at_ns
        seen_ns = driver.last_seen_at_ns
        if state.last_fix_ns == fix_ns and state.last_seen_ns == seen_ns:
            return state
        return with_times(state, fix_ns, seen_ns)

    # --- events (the outbox) and zones ---------------------------------------------------------

    def _sync_zones(self, con: sqlite3.Connection, evaluator: EventEvaluator) -> None:
        """Give the evaluator the zones committed now if its version is not the stored one."""
        version = self._zones_version
        if version is None:
            (version,) = con.execute("SELECT version FROM zones_version").fetchone()
            self._zones_version = version
        if version == evaluator.zones_version:
            return
        live = dict(con.execute("SELECT zone_id, version FROM zones WHERE deleted = 0"))
        wanted = evaluator.outdated_zones(live)
        fetched: list[Zone] = []
        if len(wanted) > len(live) // 2:  # start-up: nearly all of them, in one scan
            chosen = set(wanted)
            rows = con.execute(f"SELECT {_ZONE_COLUMNS} FROM zones WHERE deleted = 0")  # noqa: S608
            fetched = [zone_from_columns(*row) for row in rows if row[0] in chosen]
        else:  # a zone change: only the zones that changed (each row holds its WKB)
            for i in range(0, len(wanted), _ZONES_PER_READ):
                ids = wanted[i : i + _ZONES_PER_READ]
                marks = ",".join("?" * len(ids))
                rows = con.execute(
                    f"SELECT {_ZONE_COLUMNS} FROM zones WHERE zone_id IN ({marks})",  # noqa: S608
                    ids,
                )
                fetched.extend(zone_from_columns(*row) for row in rows)
        evaluator.load_zones(version, live, fetched)

    def _write_events(
        self, con: sqlite3.Connection, states: dict[str, TrackerState], events: Sequence[Event]
    ) -> list[LoggedEvent]:
        """Write tracker states and log events in the open transaction; the events as the
        log holds them (one writer, AUTOINCREMENT: a commit's ids are consecutive, its last
        the newest rowid). A state that changed only in its fix and last-seen times is not
        written: the driver's row, written in the same transaction, holds those (see
        `_connect_and_load`)."""
        before = self._trackers
        changed: list[object] = []
        for driver_id, state in states.items():
            if not stored_alike(before.get(driver_id), state):
                changed += (driver_id, state.to_json())
        if changed:
            _insert_flat(con, _tracker_replace, changed, _TRACKER_WIDTH)
        if not events:
            return []
        now = time.time_ns()
        values: list[object] = []
        extend = values.extend
        type_text = _TYPE_TEXT
        for e, body in zip(events, event_bodies(events), strict=True):
            extend((type_text[e.type], e.driver_id, e.zone_id, e.at_ns, now, body))
        _insert_flat(con, _event_insert, values, _EVENT_WIDTH)
        (last,) = con.execute("SELECT last_insert_rowid()").fetchone()
        return logged_events(range(last - len(events) + 1, last + 1), now, events)

    async def read_events(self, after_id: int, limit: int) -> list[LoggedEvent]:
        def query() -> list[LoggedEvent]:
            rows = self._connection.execute(_EVENTS_AFTER, (after_id, limit)).fetchall()
            return [event_from_row(*row) for row in rows]

        return await self._run(query)

    async def last_event_id(self) -> int:
        def query() -> int:
            row = self._connection.execute("SELECT max(id) FROM events").fetchone()
            return int(row[0] or 0)

        return await self._run(query)

    async def oldest_event_id(self) -> int:
        def query() -> int:
            row = self._connection.execute("SELECT min(id) FROM events").fetchone()
            return int(row[0] or 0)

        return await self._run(query)

    async def expire_events(self, before_ns: int, batch: int) -> int:
        def expire(con: sqlite3.Connection) -> int:
            (newest,) = con.execute("SELECT max(id) FROM events").fetchone()
            if newest is None:
                return 0
            row = con.execute(_FIRST_KEPT_EVENT, (before_ns,)).fetchone()
            end = newest if row is None else min(int(row[0]), int(newest))
            return con.execute(_EXPIRE_EVENTS, (end, batch)).rowcount

        return await self._run(lambda: self._transaction_value(expire))

    async def sweep_offline(self, now_ns: int, stale_after_ns: int) -> int:
        def sweep() -> tuple[int, list[LoggedEvent]]:
            states: dict[str, TrackerState] = {}
            events: list[Event] = []
            trackers = self._trackers
            for driver_id, state in trackers.items():
                new_state, event = sweep_stale(state, driver_id, now_ns, stale_after_ns)
                if (
                    event is not None
                    and (current := self._current_state(driver_id, state)) is not state
                ):
                    # Seen later than its state says (see _to_evaluate): kept, judged again.
                    trackers[driver_id] = current
                    new_state, event = sweep_stale(current, driver_id, now_ns, stale_after_ns)
                if event is not None:
                    states[driver_id] = new_state
                    events.append(event)
            if not events:
                return 0, []
            events.sort(key=lambda e: (e.at_ns, e.driver_id))
            logged: list[LoggedEvent] = []

            def body(con: sqlite3.Connection) -> None:
                nonlocal logged
                logged = self._write_events(con, states, events)

            self._transaction(body)
            self._trackers.update(states)
            return len(events), logged

        count, logged = await self._run(sweep)
        self._hand_over(logged)
        return count

    async def create_zone(self, zone: Zone, now_ns: int) -> Zone:
        stored = Zone(
            zone.zone_id, zone.name, zone.labels, zone.shape, zone.dwell_ns, 1, now_ns, now_ns
        )

        def body(con: sqlite3.Connection) -> None:
            taken = con.execute("SELECT 1 FROM zones WHERE zone_id = ?", (zone.zone_id,))
            if taken.fetchone() is not None:
                raise ZoneExists(zone.zone_id)
            con.execute(
                f"INSERT INTO zones ({_ZONE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",  # noqa: S608
                zone_columns(stored),
            )
            con.execute("UPDATE zones_version SET version = version + 1")
            self._zones_version = None

        await self._run(lambda: self._transaction(body))
        return stored

    def _live_version(self, con: sqlite3.Connection, zone_id: str, expected: int) -> Zone:
        row = con.execute(
            f"SELECT {_ZONE_COLUMNS} FROM zones WHERE zone_id = ? AND deleted = 0",  # noqa: S608
            (zone_id,),
        ).fetchone()
        if row is None:
            raise ZoneNotFound(zone_id)
        zone = zone_from_columns(*row)
        if expected and zone.version != expected:
            raise VersionMismatch(zone_id, expected, zone.version)
        return zone

    async def get_zone(self, zone_id: str) -> Zone:
        return await self._run(lambda: self._live_version(self._connection, zone_id, 0))

    async def list_zones(self, after_id: str, limit: int) -> list[Zone]:
        def query() -> list[Zone]:
            rows = self._connection.execute(
                f"SELECT {_ZONE_COLUMNS} FROM zones WHERE zone_id > ? AND deleted = 0"  # noqa: S608
                " ORDER BY zone_id LIMIT ?",
                (after_id, limit),
            ).fetchall()
            return [zone_from_columns(*row) for row in rows]

        return await self._run(query)

    async def update_zone(self, zone: Zone, expected_version: int, now_ns: int) -> Zone:
        result: list[Zone] = []

        def body(con: sqlite3.Connection) -> None:
            old = self._live_version(con, zone.zone_id, expected_version)
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
            con.execute(
                f"REPLACE INTO zones ({_ZONE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",  # noqa: S608
                zone_columns(new),
            )
            con.execute("UPDATE zones_version SET version = version + 1")
            self._zones_version = None
            result.append(new)

        await self._run(lambda: self._transaction(body))
        return result[0]

    async def delete_zone(self, zone_id: str, expected_version: int, now_ns: int) -> None:
        def body(con: sqlite3.Connection) -> None:
            self._live_version(con, zone_id, expected_version)
            con.execute(
                "UPDATE zones SET deleted = 1, version = version + 1, updated_at_ns = ?"
                " WHERE zone_id = ?",
                (now_ns, zone_id),
            )
            con.execute("UPDATE zones_version SET version = version + 1")
            self._zones_version = None

        await self._run(lambda: self._transaction(body))

    def _conflicts(
        self, con: sqlite3.Connection, locations: Sequence[Location]
    ) -> tuple[Location, ...]:
        """The updates refused for a different stored fix of their key: only run when the
        batch inserted fewer rows than it has, reading back just the keys that may predate
        it (the mirror still holds each driver's current fix from before the batch)."""
        drivers = self._drivers
        keys: dict[FixKey, None] = {}
        for loc in locations:
            current = drivers.get(loc.driver_id)
            newest_ns = None
            if current is not None and current.location is not None:
                newest_ns = current.location.recorded_at_ns
            if may_be_stored_already(loc, newest_ns):
                keys[loc.driver_id, loc.recorded_at_ns] = None
        params: list[object] = []
        for driver_id, at_ns in keys:
            params += (at_ns, driver_id)
        stored: dict[FixKey, Location] = {}
        step = ROWS_PER_STATEMENT * 2
        for start in range(0, len(params), step):
            chunk = params[start : start + step]
            for row in con.execute(_stored_fixes(len(chunk) // 2), chunk):
                stored[row[0], row[5]] = new_location(*row)
        return refused_updates(locations, stored)

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        driver, logged = await self._run(lambda: self._set_status(driver_id, status, at_ns))
        self._hand_over(logged)
        return driver

    def _set_status(
        self, driver_id: str, status: Status, at_ns: int
    ) -> tuple[Driver, list[LoggedEvent]]:
        current = self._drivers.get(driver_id)
        if current is None:
            driver = new_driver(driver_id, status, None, at_ns)
        else:
            driver = new_driver(
                driver_id, status, current.location, max(current.last_seen_at_ns, at_ns)
            )
        evaluator = self._evaluator
        state: TrackerState | None = None
        logged: list[LoggedEvent] = []

        def body(con: sqlite3.Connection) -> None:
            nonlocal state, logged
            con.execute(_driver_replace(1), _driver_row(driver))
            if evaluator is not None:
                stored = self._trackers.get(driver_id)
                before = NEW_DRIVER if stored is None else self._current_state(driver_id, stored)
                state, events = evaluator.on_status(before, driver_id, status, at_ns)
                logged = self._write_events(con, {driver_id: state}, events)

        self._transaction(body)
        self._drivers[driver_id] = driver
        if state is not None:
            self._trackers[driver_id] = state
        return driver, logged

    def _transaction(self, body: Callable[[sqlite3.Connection], object]) -> None:
        con = self._connection
        con.execute("BEGIN IMMEDIATE")
        try:
            body(con)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        """Scans the time window (history is clustered by time for ingest; see migration 2),
        so its cost grows with every driver's fixes in [start_ns, end_ns)."""

        def query() -> list[Location]:
            rows = self._connection.execute(
                "SELECT latitude, longitude, speed_mps, heading_degrees, recorded_at_ns"
                " FROM location_history WHERE recorded_at_ns >= ? AND recorded_at_ns < ?"
                " AND driver_id = ? ORDER BY recorded_at_ns LIMIT ?",
                (start_ns, end_ns, driver_id, limit),
            ).fetchall()
            return [new_location(driver_id, *row) for row in rows]

        return await self._run(query)

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
        """Keyset pages along location_history_by_driver, each read on the writer thread
        between commits (ingestion waits for one page at most). The next page is read
        while the caller works on this one (SQLite lets go of the GIL while it steps)."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if driver_id not in self._drivers:
            raise DriverNotFound(driver_id)
        if since_ns >= until_ns:
            return
        con = self._connection

        def query(after: int) -> list[HistoryRow]:
            rows: list[HistoryRow] = con.execute(
                _HISTORY_PAGE, (driver_id, after, until_ns, page_size)
            ).fetchall()
            return rows

        submit = self._thread.submit
        pending: asyncio.Future[list[HistoryRow]] | None = submit(
            functools.partial(query, since_ns)
        )
        try:
            while pending is not None:
                page = await pending
                pending = None
                if len(page) == page_size and (after := page[-1][4] + 1) < until_ns:
                    pending = submit(functools.partial(query, after))
                if page:
                    yield page
        finally:
            if pending is not None:  # the reader stopped early: the read ahead is dropped
                pending.cancel()
                pending.add_done_callback(_ignore_result)

    async def expire_history(self, before_ns: int, batch: int = 1000) -> int:
        """One transaction of at most `batch` rows, oldest first; its time on the writer
        thread is added to `expiry_busy_s` (the wait behind ingestion's commits is not)."""

        def expire(con: sqlite3.Connection) -> int:
            return con.execute(_EXPIRE, (before_ns, batch)).rowcount

        def timed() -> int:
            started = time.perf_counter()
            try:
                return self._transaction_value(expire)
            finally:
                self.expiry_busy_s += time.perf_counter() - started

        removed = await self._run(timed)
        self.history_rows -= removed
        return removed

    async def prepare_history(self, now_ns: int) -> None:
        """SQLite needs no storage made ahead."""

    async def history_stats(self) -> HistoryStats:
        def query() -> HistoryStats:
            con = self._connection
            (page_count,) = con.execute("PRAGMA page_count").fetchone()
            (page_size,) = con.execute("PRAGMA page_size").fetchone()
            (oldest,) = con.execute("SELECT min(recorded_at_ns) FROM location_history").fetchone()
            return HistoryStats(self.history_rows, page_count * page_size, oldest)

        return await self._run(query)

    async def forget_driver(self, driver_id: str) -> Forgotten:
        """History in transactions of FORGET_BATCH rows (ingestion's commits run between
        them), then the driver's row; the mirror forgets it last."""
        if driver_id not in self._drivers:
            raise DriverNotFound(driver_id)
        fixes = 0
        while True:
            removed = await self._run(
                lambda: self._transaction_value(
                    lambda con: (
                        con.execute(_FORGET_HISTORY, (driver_id, driver_id, FORGET_BATCH)).rowcount
                    )
                )
            )
            fixes += removed
            self.history_rows -= removed
            if removed < FORGET_BATCH:
                break

        def forget_row(con: sqlite3.Connection) -> tuple[int, int, int]:
            # Fixes that arrived since the last batch go with the row, in one transaction,
            # with the tracker state and the driver's logged events (they carry positions).
            late = con.execute(
                "DELETE FROM location_history WHERE driver_id = ?", (driver_id,)
            ).rowcount
            con.execute("DELETE FROM drivers WHERE driver_id = ?", (driver_id,))
            trackers = con.execute(
                "DELETE FROM driver_trackers WHERE driver_id = ?", (driver_id,)
            ).rowcount
            events = con.execute("DELETE FROM events WHERE driver_id = ?", (driver_id,)).rowcount
            return late, trackers, events

        def last() -> tuple[int, int, int]:
            counts = self._transaction_value(forget_row)
            self._drivers.pop(driver_id, None)
            self._trackers.pop(driver_id, None)
            return counts

        late, trackers, events = await self._run(last)
        self.history_rows -= late
        return Forgotten(fixes + late, 1, trackers, events)

    def _transaction_value(self, body: Callable[[sqlite3.Connection], T]) -> T:
        result: list[T] = []
        self._transaction(lambda con: result.append(body(con)))
        return result[0]

    async def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        """Pages by driver id from the file (the primary key's order), each read on the
        writer thread between commits, so ingestion waits for one page at most."""
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
        """From the file by primary key, on the writer thread between commits."""
        return await self._driver_page(after_id, _EVER, limit)

    async def _driver_page(self, after: str, seen_since_ns: int, limit: int) -> list[Driver]:
        def query() -> list[Driver]:
            rows = self._connection.execute(_SEEN_SINCE, (after, seen_since_ns, limit)).fetchall()
            return [_driver_from_row(row) for row in rows]

        return await self._run(query)

    async def ping(self) -> None:
        """A real write transaction: a file that cannot take a commit fails the ping."""
        probe = (str(time.time_ns()),)
        await self._run(lambda: self._transaction(lambda con: con.execute(_PROBE, probe)))

    async def close(self) -> None:
        """Close the file and release the lock; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._connection.close)
        finally:
            self._thread.shutdown()
            self._lock.close()


def _lock_file(path: Path) -> IO[bytes]:
    handle = path.open("wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreLocked(f"{path.parent} is in use by another driver-service process") from None
    return handle


def _connect_and_load(
    path: Path,
) -> tuple[sqlite3.Connection, dict[str, Driver], dict[str, TrackerState]]:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=STATEMENT_CACHE
    )
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk before we acknowledge it, even across power loss.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA busy_timeout = 5000")
        migrate(connection)
        # After the migrations (a rebuilt table may sort its whole history): the rest of
        # this connection's temporary data stays in memory (TEMP_STORE).
        connection.execute(f"PRAGMA temp_store = {TEMP_STORE}")
        drivers = {
            row[0]: _driver_from_row(row)
            for row in connection.execute(
                "SELECT driver_id, status, latitude, longitude, speed_mps, heading_degrees,"
                " location_at_ns, last_seen_at_ns FROM drivers"
            )
        }
        # A state is written only when more than its times changed (_write_events): the
        # times are those of the driver's row (its newest fix, last seen), as on every commit.
        trackers: dict[str, TrackerState] = {}
        for driver_id, text in connection.execute("SELECT driver_id, state FROM driver_trackers"):
            state = TrackerState.from_json(text)
            driver = drivers.get(driver_id)
            if driver is not None:
                loc = driver.location
                fix_ns = None if loc is None else loc.recorded_at_ns
                state = with_times(state, fix_ns, driver.last_seen_at_ns)
            trackers[driver_id] = state
    except BaseException:
        connection.close()
        raise
    return connection, drivers, trackers


def _ignore_result(future: asyncio.Future[Any]) -> None:
    """Retrieves the outcome of a read nobody waits for any more (no 'never retrieved')."""
    if not future.cancelled():
        future.exception()
