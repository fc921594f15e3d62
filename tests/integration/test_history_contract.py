"""One contract for every HistoryStore adapter (SQLite and PostgreSQL, as in
test_repository_contract): paged reads in fix-time order, retention, erasure, statistics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import pairwise
from typing import Any

import pytest

from driver_service.adapters.postgres.repository import PostgresRepository, partition_name
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.fanout import MemoryBus
from driver_service.app.history import LocationHistory
from driver_service.app.pacing import PaceLimits, Pacer
from driver_service.app.writer import LocationWriter
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
    busy = store.expiry_busy_s
    while (removed := await store.expire_history(cutoff, batch=1)) > 0:
        total += removed
    assert store.expiry_busy_s > busy  # the steps' time, which retention is paced by
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
        while await repo.expire_history(new - DAY) > 0:  # one partition a step
            pass
        async with repo._pool.acquire() as con:
            assert not await con.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1)",
                partition_name(old // DAY),
            )
        assert [x.recorded_at_ns for x in await read(repo, "a", T0, new + 1)] == [new]
    finally:
        await repo.close()


class Stepping:
    """The store as retention sees it (the real one underneath): each expiry step moves the
    fake monotonic clock and the store's busy time by `step_s` and is checked against the
    window right after it."""

    def __init__(
        self,
        store: Any,
        clock: list[float],
        step_s: float,
        after_step: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.step_s = step_s
        self.after_step = after_step
        self.steps: list[tuple[int, int]] = []  # (batch asked, removed)
        #: What the pace is measured in: `step_s` a step (the real store's is real time).
        self.expiry_busy_s = 0.0
        self.prepared_at: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def expire_history(self, before_ns: int, batch: int = 1000) -> int:
        removed: int = await self.store.expire_history(before_ns, batch)
        self.clock[0] += self.step_s
        self.expiry_busy_s += self.step_s
        self.steps.append((batch, removed))
        if self.after_step is not None:
            await self.after_step()
        return removed

    async def prepare_history(self, now_ns: int) -> None:
        self.prepared_at.append(self.clock[0])
        await self.store.prepare_history(now_ns)


async def test_paced_retention_drains_while_ingesting_and_keeps_the_window(store: Any) -> None:
    """A backlog before the cutoff (midnight of T0's day: on PostgreSQL a whole partition of
    yesterday and rows in the default partition of three days back) drains in paced steps of
    at most the pacer's batch while new fixes arrive; after every step each fix at or after
    the cutoff is still there, and at the end nothing before it is."""
    cutoff = T0 - DAY // 2
    drivers = [f"p{i}" for i in range(4)]
    old = [fix(d, -3 * 86_400 + t) for d in drivers for t in range(150)]
    old += [fix(d, -86_400 - 3600 + t) for d in drivers for t in range(150)]
    kept = [fix(d, -3600 + t) for d in drivers for t in range(20)]
    await store.record_locations(old + kept)
    clock = [0.0]
    rests: list[float] = []

    async def rest(seconds: float) -> None:
        rests.append(seconds)
        clock[0] += seconds
        await asyncio.sleep(0)  # ingestion runs between the steps

    pacer = Pacer(
        0.05, PaceLimits(first=100, smallest=100, largest=100), clock=lambda: clock[0], sleep=rest
    )
    new: list[Location] = []

    async def window_kept() -> None:
        # Right after each step, on the retention's own path: every fix at or after the
        # cutoff that was committed is still there.
        # (what was committed before the read: ingestion goes on meanwhile).
        for d in drivers:
            want = {x.recorded_at_ns for x in kept + new if x.driver_id == d}
            got = {x.recorded_at_ns for x in await read(store, d, cutoff, 2**62)}
            assert want <= got, f"a fix inside the window went ({d})"

    stepping = Stepping(store, clock, step_s=0.001, after_step=window_kept)
    history = LocationHistory(
        stepping, retention_s=DAY / 2 / S, clock_ns=lambda: T0, pacer=pacer,
        monotonic=lambda: clock[0],
    )  # fmt: skip

    async def ingest() -> None:
        for t in range(30):
            batch = [fix(d, t + 1) for d in drivers]
            await store.record_locations(batch)
            new.extend(batch)
            await asyncio.sleep(0)

    removed, _ = await asyncio.gather(history.expire_once(), ingest())
    assert all(batch == 100 and done <= 100 for batch, done in stepping.steps)
    assert removed >= 1
    assert history.expired_total == removed
    if isinstance(store, SqliteRepository):
        assert removed == len(old)
        assert len(stepping.steps) == len(old) // 100 + 1
    # Each step of 1 ms rested 19 ms: 5 % of the time, however many steps there were.
    assert rests == [pytest.approx(0.019)] * len(stepping.steps)
    for d in drivers:
        got = [x.recorded_at_ns for x in await read(store, d, 0, 2**62)]
        want = sorted(x.recorded_at_ns for x in kept + new if x.driver_id == d)
        assert got == want
    assert history.stats.oldest_ns == min(x.recorded_at_ns for x in kept)


async def test_a_long_drain_makes_storage_ahead_at_most_once_an_interval(store: Any) -> None:
    await store.record_locations(
        [fix(f"q{i}", -3 * 86_400 + t) for i in range(5) for t in range(200)]
    )
    clock = [0.0]

    async def rest(seconds: float) -> None:
        clock[0] += seconds

    pacer = Pacer(
        0.05, PaceLimits(first=10, smallest=10, largest=10), clock=lambda: clock[0], sleep=rest
    )
    stepping = Stepping(store, clock, step_s=0.001)
    history = LocationHistory(
        stepping, retention_s=DAY / S, clock_ns=lambda: T0, pacer=pacer,
        monotonic=lambda: clock[0],
    )  # fmt: skip
    every_s = 0.25
    assert await history.expire_once(every_s) >= 1
    made = stepping.prepared_at
    assert made[0] == 0.0
    assert all(b - a >= every_s for a, b in pairwise(made))
    if isinstance(store, SqliteRepository):  # 100 steps of 20 ms: 2 s of draining
        assert len(stepping.steps) == 101
        assert len(made) == int(clock[0] / every_s) + (clock[0] % every_s == 0)


async def test_postgres_detach_gives_way_to_ingestion_and_the_default_drains_in_batches(
    postgres_url: str,
) -> None:
    """While a transaction holds the lock an insert takes on history, a step does not wait
    behind it (nor make inserts queue behind itself) for more than the lock timeout: the
    partition stays, the default partition's expired rows go in batches meanwhile, and a
    later step drops the partition. A partition left detached by an interrupted step goes
    too."""
    repo = await PostgresRepository.open(postgres_url, min_size=1, max_size=3)
    try:
        old, far, new = T0 + 50 * DAY, T0 + 40 * DAY, T0 + 52 * DAY
        await repo.prepare_history(old)
        # `far` has no partition: its rows are in the default partition.
        await repo.record_locations([Location("a", 1.0, 2.0, 0.0, 0.0, old)])
        await repo.record_locations(
            [Location("b", 1.0, 2.0, 0.0, 0.0, far + k * S) for k in range(25)]
        )
        await repo.record_locations([Location("a", 1.0, 2.0, 0.0, 0.0, new)])
        old_name = partition_name(old // DAY)
        async with repo._pool.acquire() as ingesting, repo._pool.acquire() as con:
            tx = ingesting.transaction()
            await tx.start()
            await ingesting.execute("LOCK TABLE location_history IN ROW EXCLUSIVE MODE")
            steps = [await repo.expire_history(new - DAY, batch=10) for _ in range(3)]
            assert steps == [10, 10, 5]  # the default's rows; the partition waits
            assert await con.fetchval("SELECT to_regclass($1) IS NOT NULL", old_name)
            await tx.rollback()
            # One partition a step (the day before `old` was made ahead too), then none.
            dropped = 0
            while await repo.expire_history(new - DAY, batch=10) > 0:
                dropped += 1
            assert dropped == 2
            assert not await con.fetchval("SELECT to_regclass($1) IS NOT NULL", old_name)
            # Detached by a step that stopped before its drop: the next step drops it.
            await repo.prepare_history(old)
            await con.execute(f'ALTER TABLE location_history DETACH PARTITION "{old_name}"')
            assert not await con.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE c.relname = $1)",
                old_name,
            )
            assert [await repo.expire_history(new - DAY, batch=10) for _ in range(3)] == [1, 1, 0]
            assert not await con.fetchval("SELECT to_regclass($1) IS NOT NULL", old_name)
        assert [x.recorded_at_ns for x in await read(repo, "a", T0, new + 1)] == [new]
        assert await read(repo, "b", T0, new + 1) == []
    finally:
        await repo.close()


async def test_a_pass_stopped_while_resting_has_counted_its_step(store: Any) -> None:
    """The server stops (or the supervisor restarts) retention while it rests after a step:
    the fixes that step removed are in the counter the metrics export."""
    await store.record_locations([fix("r", -3 * 86_400 + t) for t in range(30)])
    resting = asyncio.Event()

    async def rest(seconds: float) -> None:
        resting.set()
        await asyncio.Event().wait()  # until cancelled

    history = LocationHistory(
        store, retention_s=DAY / S, clock_ns=lambda: T0,
        pacer=Pacer(0.05, PaceLimits(first=10, smallest=10), sleep=rest),
    )  # fmt: skip
    task = asyncio.create_task(history.expire_once())
    await resting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert history.expired_total >= 1
    left = await read(store, "r", 0, 2**62)
    assert history.expired_total == 30 - len(left) == 10


async def test_retention_rests_briefly_while_the_writer_is_idle_and_fully_beside_commits(
    store: Any,
) -> None:
    """The server's signal end to end: the pacer reads the real location writer's busy time
    over the real store (its timer the test's clock, moved by the store while it holds a
    commit). A pass with no ingestion rests as long as each step after the first (50 %); a
    pass whose rests are all spent in commits through the writer (busy 95 % of the time)
    keeps the full 5 % rest at every step."""
    drivers = [f"w{i}" for i in range(3)]

    def backlog(days_back: int) -> list[Location]:
        return [fix(d, -days_back * 86_400 + t) for d in drivers for t in range(150)]

    await store.record_locations(backlog(3) + backlog(1))
    clock = [0.0]
    hold = [0.0]  # how long the store holds the next commit, on the test's clock

    class Holding:
        """The real store; a location commit moves the clock by `hold` while in it."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def record_locations(self, locations: Sequence[Location]) -> Any:
            clock[0] += hold[0]
            return await store.record_locations(locations)

    writer = LocationWriter(Holding(), MemoryBus(), linger_s=0, timer=lambda: clock[0])  # type: ignore[arg-type]
    writer.start()
    rests: list[float] = []
    ingesting = [False]
    sent = [0]

    async def rest(seconds: float) -> None:
        rests.append(seconds)
        if ingesting[0]:  # the writer commits a fix through the whole rest
            sent[0] += 1
            hold[0] = seconds
            await writer.submit(fix(drivers[0], sent[0]))
        else:
            clock[0] += seconds

    pacer = Pacer(
        0.05, PaceLimits(first=100, smallest=100, largest=100), clock=lambda: clock[0],
        sleep=rest, busy=lambda: writer.busy_s,
    )  # fmt: skip
    stepping = Stepping(store, clock, step_s=0.001)
    history = LocationHistory(
        stepping, retention_s=DAY / 2 / S, clock_ns=lambda: T0, pacer=pacer,
        monotonic=lambda: clock[0],
    )  # fmt: skip
    try:
        assert await history.expire_once() >= 1
        assert len(rests) >= 2
        # The first step has nothing to compare with; then an idle writer: rest = step (50 %).
        assert rests == [pytest.approx(0.019)] + [pytest.approx(0.001)] * (len(rests) - 1)
        assert writer.busy_s == 0.0

        await store.record_locations(backlog(3))
        rests.clear()
        ingesting[0] = True
        hold[0] = 0.019  # ingestion resumes before the pass, and keeps the writer busy
        await writer.submit(fix(drivers[0], 0))
        assert await history.expire_once() >= 1
        assert len(rests) >= 2
        assert rests == [pytest.approx(0.019)] * len(rests)
        assert writer.busy_s == pytest.approx(0.019 + sum(rests))  # each rest in a commit
    finally:
        await writer.close()
    got = [x.recorded_at_ns for x in await read(store, drivers[0], 0, 2**62)]
    assert got == [T0 + t * S for t in range(sent[0] + 1)]
