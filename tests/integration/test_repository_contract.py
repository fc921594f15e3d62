"""One contract for every DriverRepository adapter: SQLite on a file in tmp_path and PostgreSQL
on the session's private server (a fresh database per test) must behave the same."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.domain import Driver, Location, Status
from driver_service.ports import DriverRepository

T0 = 1_717_200_000 * 10**9
END = 2**63 - 1


def loc(driver_id: str, t: int, lat: float = 1.0) -> Location:
    return Location(driver_id, lat, 2.0 + t % 7, 3.0, 4.0, T0 + t)


@dataclass
class Store:
    """Opens the same durable store again and again (a restart of the service)."""

    kind: str
    open: Callable[[], Awaitable[DriverRepository]]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        path = tmp_path / "data" / "drivers.db"
        return Store("sqlite", lambda: SqliteRepository.open(path))
    url: str = request.getfixturevalue("postgres_url")
    # The contract is about results, not the per-operation bound (tests/integration/
    # test_hung_dependencies.py holds that): 8 writers contending for 12 drivers' rows once
    # waited past the 2 s default on a loaded CI machine.
    return Store(
        "postgres", lambda: PostgresRepository.open(url, min_size=1, max_size=8, timeout_s=10.0)
    )


@pytest.fixture
async def repository(store: Store) -> AsyncIterator[DriverRepository]:
    repo = await store.open()
    yield repo
    await repo.close()


async def history_times(repo: DriverRepository, driver_id: str) -> list[int]:
    return [x.recorded_at_ns - T0 for x in await repo.location_history(driver_id, 0, END, 10**6)]


class Reference:
    """The contract as a model: current = newest fix, last_seen = newest event, and a batch
    returns the fixes that beat the running newest, in batch order; the first fix stored for
    a driver and time wins, and a different one for that key is a conflict."""

    def __init__(self) -> None:
        self.current: dict[str, Location] = {}
        self.history: dict[tuple[str, int], Location] = {}
        self.conflicts: tuple[Location, ...] = ()

    def record(self, batch: list[Location]) -> list[Location]:
        advanced = []
        conflicts = []
        for x in batch:
            if self.history.setdefault((x.driver_id, x.recorded_at_ns), x) != x:
                conflicts.append(x)
                continue
            now = self.current.get(x.driver_id)
            if now is None or x.recorded_at_ns > now.recorded_at_ns:
                self.current[x.driver_id] = x
                advanced.append(x)
        self.conflicts = tuple(conflicts)
        return advanced


async def test_state_and_history_survive_close_and_reopen(store: Store) -> None:
    first = await store.open()
    await first.record_locations([loc("a", 1), loc("a", 2), loc("b", 5)])
    await first.set_status("a", Status.BUSY, T0 + 3)
    await first.set_status("c", Status.OFFLINE, T0 + 4)
    before = {d: await first.get_driver(d) for d in ("a", "b", "c")}
    await first.close()
    await first.close()  # closing twice is harmless

    second = await store.open()
    try:
        assert {d: await second.get_driver(d) for d in ("a", "b", "c")} == before
        assert before["a"] == Driver("a", Status.BUSY, loc("a", 2), T0 + 3)
        assert before["b"] == Driver("b", Status.AVAILABLE, loc("b", 5), T0 + 5)
        assert before["c"] == Driver("c", Status.OFFLINE, None, T0 + 4)
        assert await second.location_history("a", 0, END, 10) == [loc("a", 1), loc("a", 2)]
        assert await second.location_history("b", 0, END, 10) == [loc("b", 5)]
        assert await second.get_driver("nobody") is None
        await second.ping()
    finally:
        await second.close()


async def test_out_of_order_fixes_go_to_history_but_never_move_current_back(
    repository: DriverRepository,
) -> None:
    batch = [loc("a", 5), loc("b", 2), loc("a", 3), loc("a", 7), loc("b", 1), loc("a", 6)]

    assert await repository.record_locations(batch) == [loc("a", 5), loc("b", 2), loc("a", 7)]
    assert await repository.record_locations([loc("a", 4), loc("b", 0)]) == []
    assert await repository.record_locations([loc("a", 8)]) == [loc("a", 8)]
    assert await repository.record_locations([]) == []

    assert await repository.get_driver("a") == Driver("a", Status.AVAILABLE, loc("a", 8), T0 + 8)
    assert await repository.get_driver("b") == Driver("b", Status.AVAILABLE, loc("b", 2), T0 + 2)
    assert await history_times(repository, "a") == [3, 4, 5, 6, 7, 8]
    assert await history_times(repository, "b") == [0, 1, 2]


async def test_any_arrival_order_matches_the_reference_model(
    repository: DriverRepository,
) -> None:
    """Seeded random batches over three drivers, with repeats, conflicting copies and stale
    fixes: every call returns exactly what the model says advanced and refused, and the end
    state is the model's."""
    rng = random.Random(5)
    model = Reference()
    refused = 0
    for _ in range(40):
        batch = [
            loc(rng.choice("abc"), rng.randrange(60), lat=rng.choice((1.0, 1.5)))
            for _ in range(rng.randrange(9))
        ]
        recorded = await repository.record_locations(batch)
        assert recorded == model.record(batch)
        assert recorded.conflicts == model.conflicts
        refused += len(recorded.conflicts)
    assert refused > 10  # the seed makes conflicts, within batches and across them
    for driver_id in "abc":
        newest = model.current[driver_id]
        assert await repository.get_driver(driver_id) == Driver(
            driver_id, Status.AVAILABLE, newest, newest.recorded_at_ns
        )
        assert await history_times(repository, driver_id) == sorted(
            t - T0 for d, t in model.history if d == driver_id
        )
        assert await repository.location_history(driver_id, 0, END, 100) == [
            x for (d, _), x in sorted(model.history.items()) if d == driver_id
        ]


async def test_duplicate_fixes_are_idempotent_and_the_first_copy_wins(
    repository: DriverRepository,
) -> None:
    await repository.record_locations([loc("a", 1, lat=10.0), loc("a", 2, lat=20.0)])

    advanced = await repository.record_locations(
        [loc("a", 2, lat=20.0), loc("a", 2, lat=99.0), loc("a", 1, lat=10.0)]
    )
    assert await repository.record_locations([loc("a", 3), loc("a", 3, lat=50.0)]) == [loc("a", 3)]

    assert advanced == []
    assert advanced.conflicts == (loc("a", 2, lat=99.0),)
    history = await repository.location_history("a", 0, END, 10)
    assert [(x.recorded_at_ns - T0, x.latitude) for x in history] == [
        (1, 10.0),
        (2, 20.0),
        (3, 1.0),
    ]
    driver = await repository.get_driver("a")
    assert driver is not None
    assert driver.location == loc("a", 3)


async def test_conflicting_duplicates_are_refused_and_reported(
    repository: DriverRepository,
) -> None:
    """Identical resends are no conflict; a fix that differs in any value from the one
    stored for its driver and time (earlier, or earlier in the batch) is refused, reported
    in batch order, and never becomes current, not even as the batch's newest fix."""
    first = await repository.record_locations([loc("a", 1, lat=10.0), loc("a", 2, lat=20.0)])
    assert (first, first.conflicts) == ([loc("a", 1, lat=10.0), loc("a", 2, lat=20.0)], ())

    faster = Location("a", 20.0, 2.0 + 2, 3.5, 4.0, T0 + 2)
    turned = Location("a", 10.0, 2.0 + 1, 3.0, 4.5, T0 + 1)
    recorded = await repository.record_locations(
        [
            loc("a", 2, lat=20.0),  # resent
            faster,  # differs from the stored fix in speed only
            loc("a", 3, lat=30.0),
            loc("a", 3, lat=31.0),  # differs from the batch's first copy
            turned,  # differs in heading only
            loc("a", 3, lat=30.0),  # resent within the batch
            loc("b", 1, lat=5.0),
            loc("b", 1, lat=6.0),  # a new driver's conflict within its first batch
        ]
    )
    assert recorded == [loc("a", 3, lat=30.0), loc("b", 1, lat=5.0)]
    assert recorded.conflicts == (faster, loc("a", 3, lat=31.0), turned, loc("b", 1, lat=6.0))

    newest = await repository.record_locations([loc("a", 3, lat=32.0)])  # the current fix
    assert (newest, newest.conflicts) == ([], (loc("a", 3, lat=32.0),))

    await repository.set_status("c", Status.BUSY, T0 + 1)  # a driver with no location yet
    fresh = await repository.record_locations([loc("c", 1), loc("c", 1)])
    assert (fresh, fresh.conflicts) == ([loc("c", 1)], ())

    assert await repository.get_driver("a") == Driver(
        "a", Status.AVAILABLE, loc("a", 3, 30.0), T0 + 3
    )
    assert await repository.get_driver("b") == Driver(
        "b", Status.AVAILABLE, loc("b", 1, 5.0), T0 + 1
    )
    assert await repository.location_history("a", 0, END, 10) == [
        loc("a", 1, lat=10.0),
        loc("a", 2, lat=20.0),
        loc("a", 3, lat=30.0),
    ]
    assert await repository.location_history("b", 0, END, 10) == [loc("b", 1, lat=5.0)]


async def test_set_status_upserts_and_preserves_location(store: Store) -> None:
    repo = await store.open()
    try:
        created = await repo.set_status("a", Status.BUSY, T0 + 10)
        assert created == Driver("a", Status.BUSY, None, T0 + 10)
        assert await repo.get_driver("a") == created

        assert await repo.record_locations([loc("a", 5)]) == [loc("a", 5)]  # first fix: current
        assert await repo.get_driver("a") == Driver("a", Status.BUSY, loc("a", 5), T0 + 10)

        await repo.record_locations([loc("a", 20)])
        changed = await repo.set_status("a", Status.OFFLINE, T0 + 15)  # older than the fix
        assert changed == Driver("a", Status.OFFLINE, loc("a", 20), T0 + 20)
        assert await repo.get_driver("a") == changed

        latest = await repo.set_status("a", Status.AVAILABLE, T0 + 30)
        assert latest == Driver("a", Status.AVAILABLE, loc("a", 20), T0 + 30)
        await repo.record_locations([loc("a", 25)])  # newer fix, older than last_seen
        latest = Driver("a", Status.AVAILABLE, loc("a", 25), T0 + 30)
        assert await repo.get_driver("a") == latest
    finally:
        await repo.close()

    reopened = await store.open()
    try:
        assert await reopened.get_driver("a") == latest
    finally:
        await reopened.close()


async def test_location_history_range_and_limit(repository: DriverRepository) -> None:
    await repository.record_locations([loc("a", t) for t in (9, 3, 0, 7, 1, 5, 2, 8, 6, 4)])
    await repository.record_locations([loc("b", t) for t in range(10)])

    async def times(start_ns: int, end_ns: int, limit: int) -> list[int]:
        history = await repository.location_history("a", start_ns, end_ns, limit)
        assert all(x.driver_id == "a" for x in history)
        return [x.recorded_at_ns - T0 for x in history]

    assert await times(0, END, 100) == list(range(10))
    assert await times(T0 + 2, T0 + 7, 100) == [2, 3, 4, 5, 6]
    assert await times(T0 + 2, T0 + 7, 3) == [2, 3, 4]
    assert await times(T0 + 7, T0 + 7, 100) == []
    assert await times(T0 + 100, END, 100) == []
    assert await repository.location_history("nobody", 0, END, 100) == []
    assert await repository.location_history("a", T0 + 4, T0 + 5, 1) == [loc("a", 4)]


async def test_concurrent_writers_lose_no_update(repository: DriverRepository) -> None:
    """Eight tasks write overlapping drivers (new and existing) in shuffled order, while
    statuses change: no deadlock, no lost update, and each fix is reported as advanced at most
    once while each driver's newest fix is reported exactly once."""
    rng = random.Random(7)
    drivers = [f"d{i:02d}" for i in range(12)]
    batches = [
        [loc(rng.choice(drivers), rng.randrange(10_000)) for _ in range(rng.randrange(1, 40))]
        for _ in range(160)
    ]
    statuses = [
        (rng.choice(drivers), rng.choice(list(Status)), rng.randrange(10_000)) for _ in range(40)
    ]
    advanced: list[Location] = []

    async def writer(mine: list[list[Location]]) -> None:
        for batch in mine:
            advanced.extend(await repository.record_locations(batch))

    async def status_writer() -> None:
        for driver_id, status, t in statuses:
            await repository.set_status(driver_id, status, T0 + t)

    await asyncio.wait_for(
        asyncio.gather(*(writer(batches[i::8]) for i in range(8)), status_writer()), 60
    )

    model = Reference()
    for batch in batches:
        model.record(batch)
    assert len(set(advanced)) == len(advanced)
    for driver_id in drivers:
        newest = model.current.get(driver_id)
        driver = await repository.get_driver(driver_id)
        status_times = [t for d, _, t in statuses if d == driver_id]
        if newest is None:
            assert driver is None or driver.location is None
            continue
        assert driver is not None
        assert driver.location == newest
        assert driver.last_seen_at_ns == max([newest.recorded_at_ns - T0, *status_times]) + T0
        assert sum(1 for x in advanced if x == newest) == 1
        assert await history_times(repository, driver_id) == sorted(
            t - T0 for d, t in model.history if d == driver_id
        )


async def test_a_batch_of_ten_thousand_fixes_is_one_call(repository: DriverRepository) -> None:
    await repository.record_locations([loc(f"d{i}", -1) for i in range(0, 100, 2)])
    rng = random.Random(3)
    batch = [loc(f"d{i % 100}", rng.randrange(1_000_000)) for i in range(10_000)]
    model = Reference()
    model.record([loc(f"d{i}", -1) for i in range(0, 100, 2)])
    expected = model.record(batch)

    started = time.perf_counter()
    assert await repository.record_locations(batch) == expected
    elapsed = time.perf_counter() - started

    assert elapsed < 10, f"10,000 fixes took {elapsed:.1f} s"
    distinct = {(x.driver_id, x.recorded_at_ns) for x in batch}
    stored = 0
    for i in range(100):
        stored += len(await history_times(repository, f"d{i}"))
        driver = await repository.get_driver(f"d{i}")
        assert driver is not None
        assert driver.location == model.current[f"d{i}"]
    assert stored == len(distinct) + 50
    # Sent again whole (a client resending after a lost ack): nothing new, nothing advanced,
    # nothing refused.
    resent = await repository.record_locations(batch)
    assert (resent, resent.conflicts) == ([], ())
    # Different values for 2,000 stored keys (PostgreSQL's COPY path): all refused, in order.
    changed = [loc(x.driver_id, x.recorded_at_ns - T0, lat=7.0) for x in batch[:2000]]
    refused = await repository.record_locations(changed)
    assert (refused, refused.conflicts) == ([], tuple(changed))


async def collect(repo: DriverRepository, seen_since_ns: int, page_size: int) -> list[list[Driver]]:
    return [page async for page in repo.drivers_seen_since(seen_since_ns, page_size)]


async def test_drivers_seen_since_pages_through_fresh_drivers_once_each(
    repository: DriverRepository,
) -> None:
    """A rebuild reads current state of drivers seen at or after a cutoff, in pages: every
    such driver once, none older, no page over the size, a last short or empty page ends it."""
    await repository.record_locations([loc(f"d{i:03d}", i) for i in range(250)])
    await repository.set_status("d010", Status.BUSY, T0 + 400)  # old fix, fresh status
    await repository.set_status("s-only", Status.OFFLINE, T0 + 300)  # no location at all
    await repository.set_status("s-old", Status.AVAILABLE, T0 + 50)  # before the cutoff

    pages = await collect(repository, T0 + 100, 64)

    assert [len(p) for p in pages] == [64, 64, 24]
    drivers = [d for page in pages for d in page]
    assert len({d.driver_id for d in drivers}) == len(drivers)
    expected = {f"d{i:03d}" for i in range(100, 250)} | {"d010", "s-only"}
    assert {d.driver_id for d in drivers} == expected
    for driver in drivers:
        assert driver == await repository.get_driver(driver.driver_id)
    assert await collect(repository, T0 + 1000, 64) == []
    exact = await collect(repository, T0 + 249, 1)  # at the cutoff counts; pages of one
    assert exact == [
        [Driver("d010", Status.BUSY, loc("d010", 10), T0 + 400)],
        [Driver("d249", Status.AVAILABLE, loc("d249", 249), T0 + 249)],
        [Driver("s-only", Status.OFFLINE, None, T0 + 300)],
    ]
    assert [len(p) for p in await collect(repository, T0 + 100, 152)] == [152]
    with pytest.raises(ValueError, match="page_size"):
        await collect(repository, 0, 0)


async def test_drivers_seen_since_sees_writes_between_pages(
    repository: DriverRepository,
) -> None:
    """Pages are separate short reads (no snapshot held open): a driver updated after its
    page was read is not repeated, one not read yet is read as it is now, and ingestion is
    not blocked while a reader holds the iterator between pages."""
    await repository.record_locations([loc(f"d{i}", i) for i in range(6)])
    pages = repository.drivers_seen_since(T0, 2)
    first = await anext(pages)
    assert [d.driver_id for d in first] == ["d0", "d1"]

    advanced = await asyncio.wait_for(
        repository.record_locations([loc("d0", 100), loc("d5", 101)]), 5
    )
    assert advanced == [loc("d0", 100), loc("d5", 101)]

    rest = [d async for page in pages for d in page]
    assert [d.driver_id for d in rest] == ["d2", "d3", "d4", "d5"]
    assert rest[-1].location == loc("d5", 101)


async def test_list_drivers_pages_the_whole_fleet_by_id(repository: DriverRepository) -> None:
    """The fleet listing: every driver whatever its status or age, by id, in keyset pages
    that resume after the last id; ids with `:` sort and resume like any other."""
    await repository.record_locations([loc(f"d{i:03d}", i) for i in range(150)])
    await repository.set_status("d010", Status.OFFLINE, T0 + 400)
    await repository.set_status("s:only", Status.BUSY, T0 + 1)  # no location, long ago

    pages, after = [], ""
    while True:
        page = await repository.list_drivers(after, 64)
        assert len(page) <= 64
        pages.append(page)
        if len(page) < 64:
            break
        after = page[-1].driver_id
    assert [len(p) for p in pages] == [64, 64, 23]
    drivers = [d for page in pages for d in page]
    assert [d.driver_id for d in drivers] == sorted([f"d{i:03d}" for i in range(150)] + ["s:only"])
    for driver in drivers:
        assert driver == await repository.get_driver(driver.driver_id)
    assert drivers[10] == Driver("d010", Status.OFFLINE, loc("d010", 10), T0 + 400)
    assert drivers[-1] == Driver("s:only", Status.BUSY, None, T0 + 1)
    assert await repository.list_drivers("d148", 5) == drivers[149:]
    assert await repository.list_drivers("s:only", 5) == []
    assert await repository.list_drivers("s", 1) == [drivers[-1]]


@pytest.mark.parametrize("drivers", [3, 100])  # PostgreSQL: arrays, and staged by COPY
async def test_a_batch_advances_each_driver_to_its_newest_fix_and_keeps_last_seen(
    repository: DriverRepository, drivers: int
) -> None:
    """New drivers, drivers with only a status (seen later than the batch's fixes), drivers
    whose stored fix is newer than the batch's and drivers it moves on, in one batch."""
    ids = [f"m{i:03d}" for i in range(drivers)]
    for i, driver_id in enumerate(ids):
        if i % 4 == 1:
            await repository.set_status(driver_id, Status.BUSY, T0 + 700)
        elif i % 4 == 2:
            await repository.record_locations([loc(driver_id, 900)])
        elif i % 4 == 3:
            await repository.record_locations([loc(driver_id, 10)])
    batch = [loc(driver_id, t) for t in (300, 100, 600, 200) for driver_id in reversed(ids)]

    advanced = await repository.record_locations(batch)

    expected = []
    for x in batch:
        i = ids.index(x.driver_id)
        if i % 4 != 2 and (x.recorded_at_ns - T0 in (300, 600)):
            expected.append(x)
    assert advanced == expected
    for i, driver_id in enumerate(ids):
        driver = await repository.get_driver(driver_id)
        newest = loc(driver_id, 900 if i % 4 == 2 else 600)
        status, seen = (Status.BUSY, T0 + 700) if i % 4 == 1 else (Status.AVAILABLE, None)
        assert driver == Driver(driver_id, status, newest, seen or newest.recorded_at_ns)
