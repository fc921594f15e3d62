"""SqliteRepository on real files: durability across reopen, ordering rules, transactions,
pragmas, schema versions and the single-process lock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driver_service.adapters.sqlite.repository import SqliteRepository, StoreLocked
from driver_service.adapters.sqlite.schema import SCHEMA_VERSION, SchemaTooNew, migrate
from driver_service.domain import Driver, Location, Status
from tests.helpers.sqlite_history import committed_history

T0 = 1_717_200_000 * 10**9
END = 2**63 - 1


def loc(driver_id: str, t: int, lat: float = 1.0) -> Location:
    return Location(driver_id, lat, 2.0 + t % 7, 3.0, 4.0, T0 + t)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "drivers.db"


@pytest.fixture
async def repo(db: Path) -> AsyncIterator[SqliteRepository]:
    repository = await SqliteRepository.open(db)
    yield repository
    await repository.close()


async def reopen(repository: SqliteRepository) -> SqliteRepository:
    await repository.close()
    return await SqliteRepository.open(repository.path)


async def test_current_state_and_history_survive_close_and_reopen(db: Path) -> None:
    first = await SqliteRepository.open(db)
    await first.record_locations([loc("a", 1), loc("a", 2), loc("b", 5)])
    await first.set_status("a", Status.BUSY, T0 + 3)
    await first.set_status("c", Status.OFFLINE, T0 + 4)
    before = {d: await first.get_driver(d) for d in ("a", "b", "c")}

    second = await reopen(first)
    try:
        assert {d: await second.get_driver(d) for d in ("a", "b", "c")} == before
        assert before["a"] == Driver("a", Status.BUSY, loc("a", 2), T0 + 3)
        assert before["c"] == Driver("c", Status.OFFLINE, None, T0 + 4)
        assert await second.location_history("a", 0, END, 10) == [loc("a", 1), loc("a", 2)]
        assert await second.location_history("b", 0, END, 10) == [loc("b", 5)]
        assert second.driver_count() == 3
        assert await second.get_driver("nobody") is None
    finally:
        await second.close()


async def test_new_driver_from_a_location_is_available(repo: SqliteRepository) -> None:
    await repo.record_locations([loc("a", 1)])

    assert await repo.get_driver("a") == Driver("a", Status.AVAILABLE, loc("a", 1), T0 + 1)


async def test_out_of_order_fixes_go_to_history_but_never_move_current_back(db: Path) -> None:
    repo = await SqliteRepository.open(db)
    batch = [loc("a", 5), loc("b", 2), loc("a", 3), loc("a", 7), loc("b", 1), loc("a", 6)]

    advanced = await repo.record_locations(batch)

    assert advanced == [loc("a", 5), loc("b", 2), loc("a", 7)]
    assert await repo.record_locations([loc("a", 4), loc("b", 0)]) == []
    assert await repo.record_locations([loc("a", 8)]) == [loc("a", 8)]
    a = await repo.get_driver("a")
    b = await repo.get_driver("b")
    assert a is not None
    assert b is not None
    assert a.location == loc("a", 8)
    assert a.last_seen_at_ns == T0 + 8
    assert b.location == loc("b", 2)
    assert [x.recorded_at_ns - T0 for x in await repo.location_history("a", 0, END, 99)] == [
        3,
        4,
        5,
        6,
        7,
        8,
    ]

    reopened = await reopen(repo)
    try:
        a2 = await reopened.get_driver("a")
        assert a2 is not None
        assert a2.location == loc("a", 8)
    finally:
        await reopened.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.lists(st.integers(0, 20), max_size=8), min_size=1, max_size=6))
def test_current_location_is_the_newest_fix_whatever_the_arrival_order(
    tmp_path: Path, batches: list[list[int]]
) -> None:
    """Property: after any sequence of batches, current = newest fix, history = every
    distinct fix, and each call returns exactly the fixes that beat the running newest."""

    async def scenario(path: Path) -> None:
        repository = await SqliteRepository.open(path)
        try:
            newest = -1
            for batch in batches:
                expected = []
                for t in batch:
                    if t > newest:
                        newest = t
                        expected.append(loc("a", t))
                assert await repository.record_locations([loc("a", t) for t in batch]) == expected
            distinct = sorted({t for batch in batches for t in batch})
            history = await repository.location_history("a", 0, END, 1000)
            assert [x.recorded_at_ns - T0 for x in history] == distinct
            driver = await repository.get_driver("a")
            if newest < 0:
                assert driver is None
            else:
                assert driver is not None
                assert driver.location == loc("a", newest)
        finally:
            await repository.close()

    path = tmp_path / f"prop-{len(list(tmp_path.iterdir()))}.db"
    asyncio.run(scenario(path))


async def test_duplicate_fixes_are_idempotent(db: Path, repo: SqliteRepository) -> None:
    await repo.record_locations([loc("a", 1, lat=10.0), loc("a", 2, lat=20.0)])

    advanced = await repo.record_locations(
        [loc("a", 2, lat=20.0), loc("a", 2, lat=99.0), loc("a", 1, lat=10.0)]
    )
    assert await repo.record_locations([loc("a", 3), loc("a", 3)]) == [loc("a", 3)]

    assert advanced == []
    assert committed_history(db) == [("a", T0 + 1), ("a", T0 + 2), ("a", T0 + 3)]
    history = await repo.location_history("a", 0, END, 10)
    assert [x.latitude for x in history] == [10.0, 20.0, 1.0]


async def test_set_status_upserts_and_preserves_location(db: Path) -> None:
    repo = await SqliteRepository.open(db)
    created = await repo.set_status("a", Status.BUSY, T0 + 10)
    assert created == Driver("a", Status.BUSY, None, T0 + 10)

    await repo.record_locations([loc("a", 5)])  # older than the status event
    after_location = await repo.get_driver("a")
    assert after_location == Driver("a", Status.BUSY, loc("a", 5), T0 + 10)

    await repo.record_locations([loc("a", 20)])
    changed = await repo.set_status("a", Status.OFFLINE, T0 + 15)  # event older than the fix
    assert changed == Driver("a", Status.OFFLINE, loc("a", 20), T0 + 20)
    assert await repo.get_driver("a") == changed

    latest = await repo.set_status("a", Status.AVAILABLE, T0 + 30)
    assert latest == Driver("a", Status.AVAILABLE, loc("a", 20), T0 + 30)

    reopened = await reopen(repo)
    try:
        assert await reopened.get_driver("a") == latest
    finally:
        await reopened.close()


async def test_a_batch_is_invisible_to_readers_until_it_commits_whole(
    db: Path, repo: SqliteRepository
) -> None:
    """While the batch's statements run, a second connection keeps seeing the state before it;
    the progress handler samples that view from inside the writer's open transaction."""
    await repo.record_locations([loc("seed", 0)])
    n = 20_000
    observed: list[int] = []
    reader = sqlite3.connect(db, check_same_thread=False)

    def sample() -> int:
        observed.append(reader.execute("SELECT count(*) FROM location_history").fetchone()[0])
        return 0

    await repo._run(lambda: repo._connection.set_progress_handler(sample, 20_000))
    try:
        await repo.record_locations([loc(f"d{i % 100}", i) for i in range(n)])
    finally:
        await repo._run(lambda: repo._connection.set_progress_handler(None, 0))

    final = reader.execute("SELECT count(*) FROM location_history").fetchone()[0]
    reader.close()
    assert len(observed) >= 10, "the batch finished before the reader could look"
    assert set(observed) == {1}
    assert final == n + 1


async def test_a_batch_that_fails_midway_leaves_no_trace(db: Path, repo: SqliteRepository) -> None:
    """An interrupted transaction rolls back entirely: no history, no current state, and the
    repository keeps working."""
    await repo.record_locations([loc("a", 0)])
    calls = 0

    def interrupt_after_a_while() -> int:
        nonlocal calls
        calls += 1
        return 1 if calls > 5 else 0

    await repo._run(lambda: repo._connection.set_progress_handler(interrupt_after_a_while, 1000))
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        await repo.record_locations([loc("a", i) for i in range(1, 5001)])
    await repo._run(lambda: repo._connection.set_progress_handler(None, 0))

    assert calls > 5
    assert committed_history(db) == [("a", T0)]
    driver = await repo.get_driver("a")
    assert driver is not None
    assert driver.location == loc("a", 0)
    assert await repo.record_locations([loc("a", 1)]) == [loc("a", 1)]
    assert len(committed_history(db)) == 2


async def test_wal_and_synchronous_full_are_set(db: Path, repo: SqliteRepository) -> None:
    other = sqlite3.connect(db)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()
    assert Path(str(db) + "-wal").exists()
    synchronous = await repo._run(lambda: repo._connection.execute("PRAGMA synchronous").fetchone())
    assert synchronous == (2,)  # FULL


async def test_statement_journals_stay_in_memory(repo: SqliteRepository) -> None:
    """A multi-row statement's journal past 64 KiB (rows far apart in an index) went to a
    temporary file, two write calls a page: temporary data stays in memory instead."""
    temp_store = await repo._run(lambda: repo._connection.execute("PRAGMA temp_store").fetchone())
    assert temp_store == (2,)  # MEMORY


async def test_schema_version_is_recorded_and_reopening_migrates_nothing(db: Path) -> None:
    repo = await SqliteRepository.open(db)
    await repo.record_locations([loc("a", 1)])
    con = sqlite3.connect(db, isolation_level=None)
    statements: list[str] = []
    try:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        con.set_trace_callback(statements.append)
        assert migrate(con) == SCHEMA_VERSION
        assert statements == ["PRAGMA user_version"]
        assert con.total_changes == 0
    finally:
        con.close()

    reopened = await reopen(repo)
    try:
        assert await reopened.location_history("a", 0, END, 10) == [loc("a", 1)]
    finally:
        await reopened.close()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        check.close()


async def test_fresh_migration_creates_the_tables(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    try:
        assert migrate(con) == SCHEMA_VERSION
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {
            "drivers",
            "location_history",
            "service_meta",
            "zones",
            "zones_version",
            "driver_trackers",
            "events",
            "sqlite_sequence",  # AUTOINCREMENT's: event ids are never reused
            "webhook_endpoints",
            "webhook_dead_letters",
        }
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        con.close()


async def test_a_drivers_events_are_found_by_the_index_not_a_scan(
    db: Path, repo: SqliteRepository
) -> None:
    # Migration 8: erasing a driver deletes its events through events_by_driver.
    plan = await repo._run(
        lambda: repo._connection.execute(
            "EXPLAIN QUERY PLAN DELETE FROM events WHERE driver_id = ?", ("a",)
        ).fetchall()
    )
    assert any("events_by_driver" in row[-1] for row in plan), plan


async def test_a_file_from_a_newer_release_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()

    with pytest.raises(SchemaTooNew, match="newer than this release"):
        await SqliteRepository.open(db)
    # The failed open released its lock: the next attempt reports the schema again.
    with pytest.raises(SchemaTooNew):
        await SqliteRepository.open(db)
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert con.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    finally:
        con.close()


async def test_a_second_open_on_the_same_file_is_locked_out(db: Path) -> None:
    first = await SqliteRepository.open(db)
    try:
        with pytest.raises(StoreLocked):
            await SqliteRepository.open(db)
        await first.record_locations([loc("a", 1)])  # the refused open disturbed nothing
    finally:
        await first.close()

    second = await SqliteRepository.open(db)
    try:
        assert await second.get_driver("a") is not None
    finally:
        await second.close()


async def test_location_history_range_and_limit(repo: SqliteRepository) -> None:
    await repo.record_locations([loc("a", t) for t in (9, 3, 0, 7, 1, 5, 2, 8, 6, 4)])
    await repo.record_locations([loc("b", t) for t in range(10)])

    def times(history: list[Location]) -> list[int]:
        assert all(x.driver_id == "a" for x in history)
        return [x.recorded_at_ns - T0 for x in history]

    assert times(await repo.location_history("a", 0, END, 100)) == list(range(10))
    assert times(await repo.location_history("a", T0 + 2, T0 + 7, 100)) == [2, 3, 4, 5, 6]
    assert times(await repo.location_history("a", T0 + 2, T0 + 7, 3)) == [2, 3, 4]
    assert times(await repo.location_history("a", T0 + 7, T0 + 7, 100)) == []
    assert times(await repo.location_history("a", T0 + 100, END, 100)) == []
    assert await repo.location_history("nobody", 0, END, 100) == []
    full = await repo.location_history("a", T0 + 4, T0 + 5, 1)
    assert full == [loc("a", 4)]


async def test_ping_succeeds_on_an_open_store(repo: SqliteRepository) -> None:
    await repo.ping()


async def test_batches_across_statement_boundaries_store_every_row_once(
    repo: SqliteRepository, db: Path
) -> None:
    """Rows go in as multi-row statements of ROWS_PER_STATEMENT; sizes around that edge
    (and a resend of the same batch) must store each (driver, time) exactly once."""
    from driver_service.adapters.sqlite.repository import ROWS_PER_STATEMENT

    sizes = [1, ROWS_PER_STATEMENT - 1, ROWS_PER_STATEMENT, ROWS_PER_STATEMENT + 1, 3 * 64 + 5]
    start = 0
    for size in sizes:
        batch = [loc(f"d{t % 7}", t) for t in range(start, start + size)]
        await repo.record_locations(batch)
        await repo.record_locations(batch)  # resent: idempotent
        start += size
    assert len(committed_history(db)) == start
    newest = await repo.get_driver("d0")
    assert newest is not None
    assert newest.location is not None
    assert newest.location.recorded_at_ns == T0 + max(t for t in range(start) if t % 7 == 0)


async def test_migration_2_keeps_every_row_of_a_version_1_file(db: Path) -> None:
    from driver_service.adapters.sqlite.schema import MIGRATIONS

    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        con.executemany(
            "INSERT INTO location_history VALUES (?, ?, 1.0, 2.0, 3.0, 4.0)",
            [("b", T0 + 2), ("a", T0 + 1), ("a", T0 + 3)],
        )
        con.execute(
            "INSERT INTO drivers VALUES ('a', 'BUSY', 1.0, 2.0, 3.0, 4.0, ?, ?)", (T0 + 3, T0 + 3)
        )
    finally:
        con.close()

    repository = await SqliteRepository.open(db)
    try:
        assert committed_history(db) == [("a", T0 + 1), ("a", T0 + 3), ("b", T0 + 2)]
        assert [x.recorded_at_ns for x in await repository.location_history("a", 0, END, 9)] == [
            T0 + 1,
            T0 + 3,
        ]
        driver = await repository.get_driver("a")
        assert driver is not None
        assert driver.status is Status.BUSY
        await repository.record_locations([Location("a", 1.0, 2.0, 3.0, 4.0, T0 + 1)])
        assert len(committed_history(db)) == 3  # still idempotent on (driver, time)
    finally:
        await repository.close()
