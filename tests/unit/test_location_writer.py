"""LocationWriter (group commit) and Upload counting over the real SqliteRepository.

The point of the writer is that an acknowledgement means "durably committed": every test
checks the data from a connection or repository other than the one that wrote it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.app.writer import LINGER_STEPS, Commit, LocationWriter
from driver_service.domain import Driver, Location, Status, StoreUnavailable
from driver_service.ports import Recorded
from tests.helpers.sqlite_history import committed_history


class CountingRepository:
    """The real repository, delegated to; counts commits and can fail or hold them on demand."""

    def __init__(self, inner: SqliteRepository) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.failures_left = 0
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        self.calls.append(len(locations))
        if self.gate is not None:
            await self.gate.wait()
        if self.failures_left:
            self.failures_left -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return await self.inner.record_locations(locations)

    async def get_driver(self, driver_id: str) -> Driver | None:
        return await self.inner.get_driver(driver_id)

    async def set_status(self, driver_id: str, status: Status, at_ns: int) -> Driver:
        return await self.inner.set_status(driver_id, status, at_ns)

    async def location_history(
        self, driver_id: str, start_ns: int, end_ns: int, limit: int
    ) -> list[Location]:
        return await self.inner.location_history(driver_id, start_ns, end_ns, limit)

    def drivers_seen_since(
        self, seen_since_ns: int, page_size: int = 1000
    ) -> AsyncIterator[list[Driver]]:
        return self.inner.drivers_seen_since(seen_since_ns, page_size)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        # SqliteRepository.close() is not idempotent; tests close early to reopen the file.
        if not self.closed:
            self.closed = True
            await self.inner.close()


def make_loc(driver_id: str, i: int, base_ns: int | None = None) -> Location:
    base = time.time_ns() - 10**12 if base_ns is None else base_ns
    return Location(driver_id, (i % 180) - 89.5, (i % 360) - 179.5, 10.0, 90.0, base + i)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "drivers.db"


@pytest.fixture
async def repo(db: Path) -> AsyncIterator[CountingRepository]:
    counting = CountingRepository(await SqliteRepository.open(db))
    yield counting
    await counting.close()


async def test_future_resolves_only_once_the_update_is_durably_readable(
    db: Path, repo: CountingRepository
) -> None:
    bus = MemoryBus()
    writer = LocationWriter(repo, bus)
    writer.start()
    location = make_loc("d1", 0)
    seen_at_resolution: list[list[tuple[str, int]]] = []

    commit = writer.submit(location)
    assert committed_history(db) == []

    async def wait_then_look() -> None:
        await commit.wait()
        seen_at_resolution.append(committed_history(db))

    await asyncio.wait_for(wait_then_look(), 5)

    assert seen_at_resolution == [[("d1", location.recorded_at_ns)]]
    await writer.close()
    await repo.close()
    reopened = await SqliteRepository.open(db)
    try:
        driver = await reopened.get_driver("d1")
        assert driver is not None
        assert driver.location == location
        history = await reopened.location_history("d1", 0, 2**63 - 1, 10)
        assert history == [location]
    finally:
        await reopened.close()


async def test_group_commit_batches_a_flood_and_persists_every_update(
    db: Path, repo: CountingRepository
) -> None:
    """20,000 updates from a busy loop (yielding after each, like a stream would) must cost
    far fewer transactions than updates, and none may be lost."""
    writer = LocationWriter(repo, MemoryBus())
    writer.start()
    n = 20_000
    base = time.time_ns() - 10**12
    futures = []
    for i in range(n):
        futures.append(writer.submit(make_loc(f"d{i % 50}", i, base)))
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*set(futures)), 30)
    await writer.close()

    assert sum(repo.calls) == n
    assert len(repo.calls) <= n // 20, f"{len(repo.calls)} commits for {n} updates"
    assert len(committed_history(db)) == n
    driver = await repo.get_driver("d49")
    assert driver is not None
    assert driver.location == make_loc("d49", n - 1, base)


async def test_store_failure_fails_the_future_with_store_unavailable_and_writer_recovers(
    db: Path, repo: CountingRepository
) -> None:
    writer = LocationWriter(repo, MemoryBus())
    writer.start()
    repo.failures_left = 1
    base = time.time_ns() - 10**12

    failed = writer.submit(make_loc("d1", 1, base))
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(failed, 5)

    ok = writer.submit(make_loc("d1", 2, base))
    await asyncio.wait_for(ok, 5)
    await asyncio.wait_for(writer.close(), 5)
    assert committed_history(db) == [("d1", base + 2)]


async def test_failed_commit_publishes_nothing_and_successful_one_publishes_live(
    repo: CountingRepository,
) -> None:
    bus = MemoryBus()
    sub = await bus.subscribe("d1")
    writer = LocationWriter(repo, bus)
    writer.start()
    base = time.time_ns() - 10**12

    repo.failures_left = 1
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(writer.submit(make_loc("d1", 1, base)), 5)
    await asyncio.wait_for(writer.submit(make_loc("d1", 2, base)), 5)

    assert await asyncio.wait_for(sub.next(), 1) == make_loc("d1", 2, base)
    await writer.close()
    await bus.close()


async def test_close_flushes_pending_updates_and_then_refuses_new_ones(
    db: Path, repo: CountingRepository
) -> None:
    writer = LocationWriter(repo, MemoryBus())
    writer.start()
    base = time.time_ns() - 10**12
    futures = [writer.submit(make_loc("d1", i, base)) for i in range(500)]

    await asyncio.wait_for(writer.close(), 10)

    assert all(f.succeeded() for f in futures)
    assert len(committed_history(db)) == 500
    with pytest.raises(StoreUnavailable):
        writer.submit(make_loc("d1", 999, base))


async def test_backpressure_full_flag_and_wait_for_room(repo: CountingRepository) -> None:
    writer = LocationWriter(repo, MemoryBus(), max_pending=10)
    writer.start()
    repo.gate = asyncio.Event()
    base = time.time_ns() - 10**12

    first = [writer.submit(make_loc("d1", i, base)) for i in range(10)]
    assert writer.full
    await asyncio.sleep(0.01)  # the writer takes the batch and hangs in the gated commit
    assert not writer.full
    second = [writer.submit(make_loc("d1", 10 + i, base)) for i in range(10)]
    assert writer.full

    waiter = asyncio.ensure_future(writer.wait_for_room())
    await asyncio.sleep(0.05)
    assert not waiter.done(), "wait_for_room returned while the pending batch was full"

    repo.gate.set()
    await asyncio.wait_for(waiter, 5)
    assert not writer.full
    await asyncio.wait_for(asyncio.gather(*set(first + second)), 5)
    assert repo.calls == [10, 10]
    await writer.close()


async def test_upload_counts_received_and_persisted_with_invalid_updates(
    db: Path, repo: CountingRepository
) -> None:
    tracking = DriverTracking(repo, MemoryBus())
    await tracking.start()
    now = time.time_ns()
    upload = tracking.new_upload()

    valid = [("d1", 10.0 + i, 20.0, 5.0, 180.0, now - 10**9 * (10 - i)) for i in range(7)]
    invalid = [
        ("d1", 91.0, 20.0, 5.0, 180.0, now),
        ("", 10.0, 20.0, 5.0, 180.0, now),
        ("d1", 10.0, float("nan"), 5.0, 180.0, now),
        ("d1", 10.0, 20.0, -1.0, 180.0, now),
        ("d1", 10.0, 20.0, 5.0, 180.0, now + 3600 * 10**9),
    ]
    errors = [await upload.offer(*args) for args in [*valid[:3], *invalid, *valid[3:]]]
    result = await asyncio.wait_for(upload.finish(), 10)

    assert [e is None for e in errors] == [True] * 3 + [False] * 5 + [True] * 4
    assert result.received_count == 12
    assert result.persisted_count == 7
    assert result.session_id.startswith("upl-")
    assert tracking.new_upload().session_id != result.session_id
    # persisted_count means "on disk" at the time the summary exists.
    assert [ts for _, ts in committed_history(db)] == [v[5] for v in valid]
    driver = await tracking.get_driver("d1")
    assert driver.location is not None
    assert driver.location.latitude == 16.0
    await tracking.writer.close()


async def test_upload_without_timestamp_uses_server_time(repo: CountingRepository) -> None:
    tracking = DriverTracking(repo, MemoryBus())
    await tracking.start()
    upload = tracking.new_upload()
    before = time.time_ns()

    assert await upload.offer("d1", 1.0, 2.0, 0.0, 0.0, None) is None
    result = await upload.finish()

    driver = await tracking.get_driver("d1")
    assert result.persisted_count == 1
    assert driver.location is not None
    assert before <= driver.location.recorded_at_ns <= time.time_ns()
    await tracking.writer.close()


async def test_upload_with_a_failed_commit_is_not_acknowledged(
    db: Path, repo: CountingRepository
) -> None:
    tracking = DriverTracking(repo, MemoryBus())
    await tracking.start()
    now = time.time_ns()
    upload = tracking.new_upload()

    repo.failures_left = 1
    for i in range(3):
        assert await upload.offer("d1", 1.0, 2.0, 0.0, 0.0, now - 10**9 + i) is None
    await tracking.writer.flush()
    for i in range(3, 5):
        assert await upload.offer("d1", 1.0, 2.0, 0.0, 0.0, now - 10**9 + i) is None
    with pytest.raises(StoreUnavailable, match="3 of 5 valid updates were not stored"):
        await asyncio.wait_for(upload.finish(), 10)
    assert len(committed_history(db)) == 2
    await tracking.writer.close()


async def test_upload_waits_for_room_instead_of_growing_the_batch(
    db: Path, repo: CountingRepository
) -> None:
    tracking = DriverTracking(repo, MemoryBus(), max_pending=5)
    await tracking.start()
    repo.gate = asyncio.Event()
    now = time.time_ns() - 10**9
    upload = tracking.new_upload()

    async def offer_all() -> None:
        for i in range(20):
            await upload.offer("d1", 1.0, 2.0, 0.0, 0.0, now + i)

    producer = asyncio.ensure_future(offer_all())
    await asyncio.sleep(0.05)
    assert not producer.done()
    assert upload.received <= 11  # one batch in the gated commit, one full batch pending
    repo.gate.set()
    await asyncio.wait_for(producer, 5)
    result = await asyncio.wait_for(upload.finish(), 5)

    assert result.persisted_count == 20
    assert max(repo.calls) <= 5
    assert len(committed_history(db)) == 20
    await tracking.writer.close()


async def test_submit_many_shares_one_commit_and_stores_all(
    db: Path, repo: CountingRepository
) -> None:
    writer = LocationWriter(repo, MemoryBus())
    writer.start()
    base = time.time_ns() - 10**12
    first = writer.submit_many([make_loc(f"d{i}", i, base) for i in range(150)])
    second = writer.submit_many([make_loc("d0", 1000, base)])
    assert first is second  # same open batch, one commit
    await asyncio.wait_for(first, 5)
    await writer.close()

    assert len(committed_history(db)) == 151
    driver = await repo.get_driver("d0")
    assert driver is not None
    assert driver.location == make_loc("d0", 1000, base)


async def test_a_trickle_lingers_into_fewer_commits(repo: CountingRepository) -> None:
    """Updates arriving one every ~0.2 ms (a single UploadLocations stream) are committed a
    millisecond's worth at a time, not one by one; without the linger they are not."""

    async def commits_for(linger_s: float) -> int:
        repo.calls.clear()
        writer = LocationWriter(repo, MemoryBus(), linger_s=linger_s)
        writer.start()
        base = time.time_ns() - 10**12
        futures = []
        for i in range(200):
            futures.append(writer.submit(make_loc("trickle", i, base + linger_s_ns(linger_s))))
            await asyncio.sleep(0.0002)
        await asyncio.wait_for(asyncio.gather(*set(futures)), 30)
        await writer.close()
        assert sum(repo.calls) == 200
        return len(repo.calls)

    # A long linger, so a loaded machine oversleeping the 0.2 ms gaps still fills each window.
    lingering = await commits_for(0.05)
    eager = await commits_for(0.0)
    assert lingering * 2 < eager, (lingering, eager)


async def lingered_commits(repo: CountingRepository, arrivals: int) -> tuple[list[int], int]:
    """One update, then the writer's linger, whose every step sees `arrivals` more updates
    arrive (0: a trickle): the commits' sizes and how many linger steps were taken."""
    steps = 0
    base = time.time_ns() - 10**12
    futures: list[Commit] = []

    async def arriving(delay: float) -> None:
        nonlocal steps
        steps += 1
        futures.extend(
            writer.submit(make_loc("flood", steps * 10 + i, base)) for i in range(arrivals)
        )
        await asyncio.sleep(0)

    writer = LocationWriter(repo, MemoryBus(), linger_s=0.001, sleep=arriving)
    writer.start()
    futures.append(writer.submit(make_loc("flood", 0, base)))
    await asyncio.wait_for(asyncio.gather(*set(futures)), 30)
    await writer.close()
    return repo.calls, steps


async def test_a_flood_of_single_updates_keeps_lingering_into_one_larger_commit(
    repo: CountingRepository,
) -> None:
    """While updates keep arriving, the linger goes on (LINGER_STEPS of LINGER_S), so a flood
    of single updates commits several milliseconds' worth at once, not one's worth."""
    calls, steps = await lingered_commits(repo, 3)
    assert steps == LINGER_STEPS
    assert calls == [1 + 3 * LINGER_STEPS]


async def test_a_trickle_commits_after_one_linger_step(repo: CountingRepository) -> None:
    """Nothing new within one LINGER_S: the update is committed then, not later."""
    calls, steps = await lingered_commits(repo, 0)
    assert (calls, steps) == ([1], 1)


def linger_s_ns(linger_s: float) -> int:
    """Distinct timestamps per run (history is idempotent on driver and time)."""
    return int(linger_s * 10**9) * 1000


class RecordingBus(MemoryBus):
    """The real in-process bus, remembering every location it was asked to publish."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Location] = []

    async def publish(self, locations: Sequence[Location]) -> None:
        self.published.extend(locations)
        await super().publish(locations)


async def test_conflicting_duplicates_across_streams_of_one_commit_count_once(
    repo: CountingRepository,
) -> None:
    """Three streams send one fix each for the same driver and timestamp into the same group
    commit: the first stored (the first queued) wins; the identical resend counts, the
    different one neither counts, nor becomes current, nor is published."""
    bus = RecordingBus()
    rejected: list[str] = []
    tracking = DriverTracking(repo, bus, count_rejection=rejected.append)
    await tracking.start()
    at = time.time_ns() - 10**9
    repo.gate = asyncio.Event()
    held = tracking.new_upload()
    await held.offer("other", 1.0, 2.0, 3.0, 4.0, at)
    await asyncio.sleep(0.01)  # the writer takes that commit and waits at the gate
    assert repo.calls == [1]

    first, conflicting, resent = (tracking.new_upload() for _ in range(3))
    await first.offer("d1", 10.0, 20.0, 5.0, 90.0, at)
    await conflicting.offer("d1", 11.0, 20.0, 5.0, 90.0, at)
    await resent.offer("d1", 10.0, 20.0, 5.0, 90.0, at)
    assert tracking.writer.queued == 3
    repo.gate.set()
    results = [await asyncio.wait_for(u.finish(), 5) for u in (held, first, conflicting, resent)]

    assert repo.calls == [1, 3]  # the three went into one commit
    assert [(r.received_count, r.persisted_count) for r in results] == [
        (1, 1),
        (1, 1),
        (1, 0),
        (1, 1),
    ]
    winner = Location("d1", 10.0, 20.0, 5.0, 90.0, at)
    assert (await tracking.get_driver("d1")).location == winner
    assert await repo.location_history("d1", 0, 2**63 - 1, 10) == [winner]
    assert [x for x in bus.published if x.driver_id == "d1"] == [winner]
    assert rejected == ["conflict"]
    await tracking.close()


async def test_a_long_stream_holds_only_the_commits_in_flight(repo: CountingRepository) -> None:
    """A stream (a session that runs for hours) settles each finished commit as the next
    begins: it never holds more than the commits not yet counted, and counts them all."""
    tracking = DriverTracking(repo, MemoryBus())
    await tracking.start()
    base = time.time_ns() - 10**12
    upload = tracking.new_upload()
    held = []
    for i in range(60):
        await upload.offer("d1", 10.0, 20.0, 5.0, 90.0, base + i)
        if i % 3 == 2:  # every third fix conflicts with the one before it
            await upload.offer("d1", 11.0, 20.0, 5.0, 90.0, base + i)
        await tracking.writer.flush()
        held.append(upload.unsettled_commits)
    result = await asyncio.wait_for(upload.finish(), 5)

    assert len(repo.calls) >= 40  # many commits: the bound below is not trivially met
    assert max(held) <= 2, held
    assert upload.unsettled_commits == 0
    assert (result.received_count, result.persisted_count) == (80, 60)
    await tracking.close()


async def test_batched_offers_count_conflicts_within_and_across_commits(
    repo: CountingRepository,
) -> None:
    tracking = DriverTracking(repo, MemoryBus())
    await tracking.start()
    at = time.time_ns() - 10**9
    x = ("d1", 10.0, 20.0, 5.0, 90.0, at)
    other = ("d1", 12.0, 20.0, 5.0, 90.0, at)
    upload = tracking.new_upload()
    await upload.offer_many([x, other, x])  # one message: the first copy wins
    await tracking.writer.flush()
    await upload.offer_many([other, x, ("d1", 13.0, 20.0, 5.0, 90.0, at + 1)])
    result = await asyncio.wait_for(upload.finish(), 5)

    assert (result.received_count, result.persisted_count) == (6, 4)
    driver = await tracking.get_driver("d1")
    assert driver.location == Location("d1", 13.0, 20.0, 5.0, 90.0, at + 1)
    history = await repo.location_history("d1", 0, 2**63 - 1, 10)
    assert [h.latitude for h in history] == [10.0, 13.0]
    await tracking.close()


async def test_busy_s_adds_each_commit_s_time_in_the_store_and_nothing_else(
    repo: CountingRepository,
) -> None:
    """Retention's pacer reads `busy_s` for how busy ingestion keeps the store: each commit
    adds its time in the store, while in it too, failed or not; time between commits adds
    nothing. The timer is a hand-moved one, so the sums are exact."""
    now = [100.0]
    writer = LocationWriter(repo, MemoryBus(), linger_s=0, timer=lambda: now[0])
    writer.start()
    base = time.time_ns() - 10**12
    assert writer.busy_s == 0.0
    repo.gate = asyncio.Event()
    held = writer.submit(make_loc("d1", 1, base))

    async def handed_to_the_store(commits: int) -> None:
        while len(repo.calls) < commits:
            await asyncio.sleep(0)

    await asyncio.wait_for(handed_to_the_store(1), 5)
    now[0] += 0.25  # the store holds the commit
    assert writer.busy_s == 0.25  # counted while the store holds it
    repo.gate.set()
    await asyncio.wait_for(held, 5)
    assert writer.busy_s == 0.25
    now[0] += 10.0  # idle between commits: not busy
    repo.gate = asyncio.Event()
    repo.failures_left = 1
    failing = writer.submit(make_loc("d1", 2, base))
    await asyncio.wait_for(handed_to_the_store(2), 5)
    now[0] += 0.5
    assert writer.busy_s == 0.75
    repo.gate.set()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(failing, 5)
    assert writer.busy_s == 0.75  # a failed commit held the store too
    now[0] += 10.0
    assert writer.busy_s == 0.75  # and ended
    await writer.close()
