"""One contract for every HistoryStore adapter (SQLite and PostgreSQL, as in
test_repository_contract): paged reads in fix-time order, retention, erasure, statistics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from driver_service.adapters.postgres.repository import PostgresRepository, partition_name
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.domain import DriverNotFound, Location

DAY = 86_400 * 10**9
#: Noon of a UTC day, so that +-hours stay within it.
T0 = (1_717_200_000 * 10**9 // DAY) * DAY + DAY // 2
S = 10**9


def fix(driver_id: str, t_s: float, lat: float = 52.0) -> Location:
    return Location(driver_id, lat, 13.0 + t_s * 1e-5, 5.0, 90.0, T0 + int(t_s * S))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Any]:
    if store_url.startswith("postgres"):
        repo: Any = await PostgresRepository.open(store_url, min_size=1, max_size=4)
        await repo.prepare_history(T0)
    else:
        repo = await SqliteRepository.open(store_url)
    yield repo
    await repo.close()


async def read(store: Any, driver_id: str, since: int, until: int, page: int = 5000) -> list:
    pages = [p async for p in store.history_pages(driver_id, since, until, page)]
    assert all(0 < len(p) <= page for p in pages)
    return [x for p in pages for x in p]


async def test_pages_are_in_fix_time_order_with_late_and_duplicate_fixes(store: Any) -> None:
    await store.record_locations([fix("a", 10), fix("a", 30), fix("b", 20)])
    # Late fixes, an identical resend and a different fix for a stored key (refused).
    await store.record_locations([fix("a", 20), fix("a", 0), fix("a", 10), fix("a", 30, 1.0)])
    got = await read(store, "a", T0, T0 + 100 * S, page=2)
    assert [x.recorded_at_ns - T0 for x in got] == [0, 10 * S, 20 * S, 30 * S]
    assert got[-1].latitude == 52.0  # the first stored fix of a key wins
    assert all(x.driver_id == "a" for x in got)


async def test_range_is_half_open_and_paging_loses_nothing(store: Any) -> None:
    await store.record_locations([fix("a", t) for t in range(1000)])
    got = await read(store, "a", T0 + 100 * S, T0 + 900 * S, page=7)
    assert [x.recorded_at_ns for x in got] == [T0 + t * S for t in range(100, 900)]


async def test_unknown_driver_is_not_found_and_empty_range_is_empty(store: Any) -> None:
    await store.record_locations([fix("a", 1)])
    with pytest.raises(DriverNotFound):
        await read(store, "nobody", T0, T0 + S)
    assert await read(store, "a", T0 + 5 * S, T0 + 10 * S) == []


async def test_expiry_removes_only_what_is_older_than_the_cutoff(store: Any) -> None:
    hour = 3600
    # Two days ago, yesterday, and today around noon.
    times = [-2 * 86_400 + 60, -86_400 - hour, -86_400 + hour, -hour, 0, hour]
    await store.record_locations([fix("a", t) for t in times])
    cutoff = T0 - 86_400 * S  # exactly 24 h back
    total = 0
    while (removed := await store.expire_history(cutoff, batch=1)) > 0:
        total += removed
    left = [x.recorded_at_ns for x in await read(store, "a", 0, 2**62)]
    # Nothing at or after the cutoff goes.
    assert [t for t in left if t >= cutoff] == [T0 + t * S for t in times if t >= -86_400]
    if isinstance(store, SqliteRepository):  # exact to the nanosecond
        assert left == [T0 + t * S for t in times if t >= -86_400]
    else:  # whole days: the day holding the cutoff stays until it has passed
        assert left == [T0 + t * S for t in times if t >= -86_400 - hour]
    stats = await store.history_stats()
    assert stats.oldest_ns == left[0]


async def test_retention_while_ingesting_drops_exactly_the_expired(store: Any) -> None:
    old = [fix(f"d{i}", -3 * 86_400 + t) for i in range(3) for t in range(300)]
    await store.record_locations(old)
    cutoff = T0 - 2 * 86_400 * S

    async def ingest() -> None:
        for t in range(50):
            await store.record_locations([fix(f"d{i}", t) for i in range(3)])
            await asyncio.sleep(0)

    async def expire() -> None:
        while await store.expire_history(cutoff, batch=100) > 0:
            await asyncio.sleep(0)

    await asyncio.gather(ingest(), expire())
    for i in range(3):
        got = await read(store, f"d{i}", 0, 2**62)
        assert [x.recorded_at_ns for x in got] == [T0 + t * S for t in range(50)]


async def test_forget_erases_history_and_current_state(store: Any) -> None:
    await store.record_locations([fix("a", t) for t in range(25)] + [fix("b", 1)])
    forgotten = await store.forget_driver("a")
    assert (forgotten.history_fixes, forgotten.driver_records) == (25, 1)
    assert await store.get_driver("a") is None
    with pytest.raises(DriverNotFound):
        await read(store, "a", 0, 2**62)
    with pytest.raises(DriverNotFound):
        await store.forget_driver("a")
    assert len(await read(store, "b", 0, 2**62)) == 1  # others are untouched


async def test_stats_count_rows_and_bytes(store: Any) -> None:
    await store.record_locations([fix("a", t) for t in range(100)])
    if isinstance(store, PostgresRepository):
        async with store._pool.acquire() as con:
            await con.execute("ANALYZE location_history")
    stats = await store.history_stats()
    assert stats.rows == 100
    assert stats.bytes > 0
    assert stats.oldest_ns == T0


async def test_postgres_partitions_are_made_ahead_and_take_default_rows(
    postgres_url: str,
) -> None:
    repo = await PostgresRepository.open(postgres_url, min_size=1, max_size=2)
    try:
        far = T0 + 30 * DAY
        await repo.record_locations([Location("a", 1.0, 2.0, 0.0, 0.0, far)])
        async with repo._pool.acquire() as con:
            assert await con.fetchval("SELECT count(*) FROM location_history_default") == 1
        await repo.prepare_history(far)
        async with repo._pool.acquire() as con:
            assert await con.fetchval("SELECT count(*) FROM location_history_default") == 0
            name = partition_name(far // DAY)
            assert await con.fetchval(f'SELECT count(*) FROM "{name}"') == 1
            names = {
                r[0]
                for r in await con.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'location_history'::regclass"
                )
            }
        assert {partition_name(far // DAY + k) for k in range(-1, 4)} <= names
        assert await read(repo, "a", far, far + 1) != []
    finally:
        await repo.close()


async def test_postgres_retention_drops_an_expired_daily_partition(postgres_url: str) -> None:
    """With the default partition beside it (PostgreSQL refuses a concurrent detach then)."""
    repo = await PostgresRepository.open(postgres_url, min_size=1, max_size=2)
    try:
        old, new = T0 + 40 * DAY, T0 + 42 * DAY
        await repo.prepare_history(old)
        await repo.record_locations(
            [Location("a", 1.0, 2.0, 0.0, 0.0, old), Location("a", 1.0, 2.0, 0.0, 0.0, new)]
        )
        await repo.expire_history(new - DAY)
        async with repo._pool.acquire() as con:
            assert not await con.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1)",
                partition_name(old // DAY),
            )
        assert [x.recorded_at_ns for x in await read(repo, "a", T0, new + 1)] == [new]
    finally:
        await repo.close()
