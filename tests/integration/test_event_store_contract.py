"""Zones and the event log (outbox) on both stores: SQLite on a file and PostgreSQL on the
session's private server must behave the same."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driver_service.adapters.postgres.repository import _STALE_CANDIDATES, PostgresRepository
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.evaluation import ZoneEvaluator
from driver_service.domain import Location, Status
from driver_service.domain.errors import VersionMismatch, ZoneExists, ZoneNotFound
from driver_service.domain.events import Event, EventType, LoggedEvent, TrackerState
from driver_service.domain.zones import Circle, Zone

T0 = 1_717_200_000 * 10**9
S = 10**9
#: A circle of 500 m around (52.0, 13.0); 0.01 degrees of latitude are ~1.1 km.
CENTRE = (52.0, 13.0)
FAR = 52.05


def fix(driver_id: str, t_s: float, lat: float = FAR, lon: float = 13.0) -> Location:
    return Location(driver_id, lat, lon, 1.0, 0.0, T0 + int(t_s * S))


def circle_zone(zone_id: str = "z1", dwell_s: int = 0, radius_m: float = 500.0) -> Zone:
    return Zone(zone_id, "zone", ("airport",), Circle(*CENTRE, radius_m), dwell_s * S)


@dataclass
class Store:
    kind: str
    open: Callable[[ZoneEvaluator], Awaitable[Any]]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        path = tmp_path / "data" / "drivers.db"
        return Store("sqlite", lambda ev: SqliteRepository.open(path, evaluator=ev))
    url: str = request.getfixturevalue("postgres_url")
    return Store(
        "postgres", lambda ev: PostgresRepository.open(url, min_size=1, max_size=8, evaluator=ev)
    )


@pytest.fixture
async def repo(store: Store) -> AsyncIterator[Any]:
    repository = await store.open(ZoneEvaluator())
    yield repository
    await repository.close()


async def types_of(repo: Any, after: int = 0) -> list[tuple[str, str, str]]:
    return [
        (e.event.type.value, e.event.driver_id, e.event.zone_id)
        for e in await repo.read_events(after, 10_000)
    ]


async def test_zone_crud_versions_and_tombstones(repo: Any) -> None:
    created = await repo.create_zone(circle_zone(), 5)
    assert (created.version, created.created_at_ns, created.updated_at_ns) == (1, 5, 5)
    assert await repo.get_zone("z1") == created
    with pytest.raises(ZoneExists):
        await repo.create_zone(circle_zone(), 6)
    bigger = circle_zone(radius_m=900.0)
    with pytest.raises(VersionMismatch):
        await repo.update_zone(bigger, 7, 8)
    updated = await repo.update_zone(bigger, 1, 9)
    assert (updated.version, updated.created_at_ns, updated.updated_at_ns) == (2, 5, 9)
    assert [z.zone_id for z in await repo.list_zones("", 10)] == ["z1"]
    with pytest.raises(VersionMismatch):
        await repo.delete_zone("z1", 1, 10)
    await repo.delete_zone("z1", 2, 10)
    with pytest.raises(ZoneNotFound):
        await repo.get_zone("z1")
    with pytest.raises(ZoneNotFound):
        await repo.update_zone(bigger, 0, 11)
    assert await repo.list_zones("", 10) == []
    with pytest.raises(ZoneExists):  # never reused
        await repo.create_zone(circle_zone(), 12)


async def test_enter_exit_dwell_are_logged_with_the_commit(store: Store) -> None:
    repo = await store.open(ZoneEvaluator())
    try:
        await repo.create_zone(circle_zone(dwell_s=60), 1)
        await repo.record_locations([fix("d1", 0), fix("d1", 10, lat=52.0)])
        await repo.record_locations([fix("d1", 80, lat=52.0)])
        await repo.record_locations([fix("d1", 90)])
        assert await types_of(repo) == [
            ("driver.online", "d1", ""),
            ("zone.enter", "d1", "z1"),
            ("zone.dwell", "d1", "z1"),
            ("zone.exit", "d1", "z1"),
        ]
        ids = [e.event_id for e in await repo.read_events(0, 100)]
        assert ids == sorted(ids)
        assert len(set(ids)) == 4
        assert await repo.last_event_id() == ids[-1]
        assert [e.event_id for e in await repo.read_events(ids[1], 100)] == ids[2:]
        enter = (await repo.read_events(ids[0], 1))[0].event
        assert enter.location is not None
        assert enter.location.latitude == 52.0
        assert enter.zone_version == 1
    finally:
        await repo.close()
    # The tracker state survives a restart: no second driver.online, the visit goes on.
    repo = await store.open(ZoneEvaluator())
    try:
        await repo.record_locations([fix("d1", 100, lat=52.0)])
        assert (await types_of(repo))[-1] == ("zone.enter", "d1", "z1")
        assert len(await types_of(repo)) == 5
    finally:
        await repo.close()


async def test_out_of_order_and_duplicate_fixes_log_nothing(repo: Any) -> None:
    await repo.create_zone(circle_zone(), 1)
    await repo.record_locations([fix("d1", 10)])
    before = await repo.last_event_id()
    await repo.record_locations([fix("d1", 10)])  # duplicate
    await repo.record_locations([fix("d1", 5, lat=52.0)])  # older, inside the zone
    await repo.record_locations([fix("d1", 10, lat=52.0)])  # conflicting duplicate
    assert await repo.last_event_id() == before


async def test_a_zone_change_counts_from_the_next_update(repo: Any) -> None:
    await repo.record_locations([fix("d1", 0, lat=52.0)])
    assert await types_of(repo) == [("driver.online", "d1", "")]
    await repo.create_zone(circle_zone(), 1)
    await repo.record_locations([fix("d1", 1, lat=52.0)])
    assert (await types_of(repo))[-1] == ("zone.enter", "d1", "z1")
    await repo.delete_zone("z1", 0, 2)
    await repo.record_locations([fix("d1", 2, lat=52.0)])
    last = (await repo.read_events(0, 100))[-1].event
    assert (last.type, last.zone_deleted) == (EventType.ZONE_EXIT, True)


async def test_a_reopened_store_times_offline_from_the_last_fix_seen(store: Store) -> None:
    # Fixes that change nothing but the times (inside the zone, entered already) may leave
    # the stored tracker state as it was (SQLite writes it only when more changed): after a
    # restart the tracker still knows the newest fix and when the driver was last seen.
    repo = await store.open(ZoneEvaluator())
    try:
        await repo.create_zone(circle_zone(), 1)
        await repo.record_locations([fix("d1", 0, lat=52.0)])
        for t_s in (10, 20, 30):
            await repo.record_locations([fix("d1", t_s, lat=52.0)])
        assert len(await types_of(repo)) == 2  # online, enter
    finally:
        await repo.close()
    repo = await store.open(ZoneEvaluator())
    try:
        await repo.record_locations([fix("d1", 25, lat=52.0)])  # older than the newest: history
        assert await repo.sweep_offline(T0 + 60 * S, 30 * S) == 0  # seen at 30 s: not stale
        assert await repo.sweep_offline(T0 + 61 * S, 30 * S) == 1
        offline = (await repo.read_events(0, 100))[-1].event
        assert (offline.type, offline.at_ns) == (EventType.DRIVER_OFFLINE, T0 + 60 * S)
        await repo.record_locations([fix("d1", 90, lat=52.0)])
        assert (await types_of(repo))[-1] == ("driver.online", "d1", "")
        assert len(await types_of(repo)) == 4  # back online inside: no second enter
    finally:
        await repo.close()


async def test_many_events_of_one_commit_get_ids_in_order(repo: Any) -> None:
    # 150 drivers coming online inside a zone in one commit: 300 events, written in rows of
    # many per statement, with ids in the order the tracker produced them.
    await repo.create_zone(circle_zone(), 1)
    await repo.record_locations([fix(f"d{i:03}", 0, lat=52.0) for i in range(150)])
    logged = await repo.read_events(0, 1000)
    assert [(e.event.type.value, e.event.driver_id) for e in logged] == [
        (kind, f"d{i:03}") for i in range(150) for kind in ("driver.online", "zone.enter")
    ]
    ids = [e.event_id for e in logged]
    assert ids == list(range(ids[0], ids[0] + 300))
    assert await repo.last_event_id() == ids[-1]


async def test_the_offline_sweep_reads_the_drivers_online_by_index(postgres_url: str) -> None:
    # PostgreSQL migration 6: the sweep's candidate query can use the partial index of the
    # drivers online (the planner is told to avoid a scan, which it may still pick for a
    # small table): it is indexable, where a LIKE on every row was not.
    repo = await postgres_replica(postgres_url)
    try:
        await repo.record_locations([fix(f"d{i}", 0) for i in range(20)])
        async with repo._pool.acquire() as con, con.transaction():
            await con.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(
                row[0] for row in await con.fetch("EXPLAIN " + _STALE_CANDIDATES, T0 + 60 * S)
            )
        assert "drivers_online" in plan, plan
        assert await repo.sweep_offline(T0 + 60 * S, 30 * S) == 20
    finally:
        await repo.close()


class CountingEvaluator(ZoneEvaluator):
    """A ZoneEvaluator that remembers the fixes each on_locations call was given."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluated: list[list[str]] = []

    def on_locations(
        self, states: Mapping[str, TrackerState], advanced: Sequence[Location]
    ) -> tuple[dict[str, TrackerState], list[Event]]:
        self.evaluated.append([x.driver_id for x in advanced])
        return super().on_locations(states, advanced)


@pytest.mark.parametrize("drivers", [2, 20])  # PostgreSQL: arrays, and staged by COPY
async def test_fixes_that_move_only_times_are_left_out_of_the_evaluation(
    store: Store, drivers: int
) -> None:
    """With no zone, a fix of a driver online with a status changes only times already in
    its row: neither store evaluates it (nor copies its state), and both log the same events
    as before (each driver.online once; an offline driver comes back). The offline sweep
    goes by when a driver was last seen, which such fixes move (SQLite keeps the state of
    the last evaluation in memory: its times are the row's)."""
    evaluator = CountingEvaluator()
    repo = await store.open(evaluator)
    try:
        ids = [f"d{i:02d}" for i in range(drivers)]
        await repo.record_locations([fix(d, t) for t in (0, 1) for d in ids])
        await repo.set_status(ids[0], Status.BUSY, T0 + 2 * S)
        evaluator.evaluated.clear()
        await repo.record_locations([fix(d, t) for t in (3, 4, 50) for d in ids])
        assert evaluator.evaluated == []
        assert await repo.sweep_offline(T0 + 60 * S, 30 * S) == 0  # seen at 50 s
        await repo.set_status(ids[0], Status.AVAILABLE, T0 + 51 * S)
        assert await repo.sweep_offline(T0 + 81 * S, 30 * S) == drivers - 1
        assert await repo.sweep_offline(T0 + 82 * S, 30 * S) == 1
        await repo.record_locations([fix(d, 90) for d in ids])
        assert evaluator.evaluated == [ids]
        logged = [x.event for x in await repo.read_events(0, 1000)]
        assert [e.type for e in logged] == [
            *[EventType.DRIVER_ONLINE] * drivers,
            EventType.DRIVER_STATUS_CHANGED,
            EventType.DRIVER_STATUS_CHANGED,
            *[EventType.DRIVER_OFFLINE] * drivers,
            *[EventType.DRIVER_ONLINE] * drivers,
        ]
        offline = [e for e in logged if e.type is EventType.DRIVER_OFFLINE]
        assert [(e.driver_id, e.at_ns) for e in offline] == [
            *[(d, T0 + 80 * S) for d in ids[1:]],
            (ids[0], T0 + 81 * S),
        ]
    finally:
        await repo.close()


def postgres_replica(url: str) -> Awaitable[PostgresRepository]:
    return PostgresRepository.open(url, min_size=1, max_size=8, evaluator=ZoneEvaluator())


async def test_a_zone_changed_by_another_replica_is_seen_at_once(postgres_url: str) -> None:
    """Two replicas on one PostgreSQL: the second never evaluates against the zones it
    loaded before the change (no zone.enter missed, none logged twice)."""
    a, b = await postgres_replica(postgres_url), await postgres_replica(postgres_url)
    try:
        await b.record_locations([fix("d1", 0, lat=52.0)])  # b has loaded "no zones"
        await a.create_zone(circle_zone(), 1)
        await b.record_locations([fix("d1", 1, lat=52.0)])  # b must see z1 now
        await a.record_locations([fix("d1", 2, lat=52.0)])
        await b.record_locations([fix("d1", 3, lat=52.0)])
        assert await types_of(a) == [("driver.online", "d1", ""), ("zone.enter", "d1", "z1")]
    finally:
        await a.close()
        await b.close()


async def test_status_and_offline_are_logged_once(store: Store) -> None:
    a = await store.open(ZoneEvaluator())
    b = await store.open(ZoneEvaluator()) if store.kind == "postgres" else a
    try:
        await a.set_status("d1", Status.BUSY, T0)
        await a.set_status("d1", Status.BUSY, T0 + 1)
        await a.set_status("d1", Status.AVAILABLE, T0 + 2)
        assert await types_of(a) == [
            ("driver.online", "d1", ""),
            ("driver.status_changed", "d1", ""),
        ]
        counts = await asyncio.gather(
            a.sweep_offline(T0 + 100 * S, 30 * S), b.sweep_offline(T0 + 100 * S, 30 * S)
        )
        assert sum(counts) == 1
        offline = (await a.read_events(0, 100))[-1].event
        assert (offline.type, offline.at_ns) == (EventType.DRIVER_OFFLINE, T0 + 2 + 30 * S)
        assert await a.sweep_offline(T0 + 200 * S, 30 * S) == 0
        await a.record_locations([fix("d1", 300)])
        assert (await types_of(a))[-1] == ("driver.online", "d1", "")
    finally:
        await a.close()
        if b is not a:
            await b.close()


async def test_replicas_produce_each_event_once_in_id_order(postgres_url: str) -> None:
    """Three replicas on one PostgreSQL commit interleaved updates of the same drivers at
    once: every transition is logged once, and a driver's events are in fix order."""
    replicas = [await postgres_replica(postgres_url) for _ in range(3)]
    try:
        await replicas[0].create_zone(circle_zone(), 1)
        drivers = [f"d{i}" for i in range(20)]

        async def drive(r: int) -> None:
            for step in range(30):
                t = step * 3 + r
                inside = (t // 10) % 2 == 1
                batch = [fix(d, t, lat=52.0 if inside else FAR) for d in drivers]
                await replicas[r].record_locations(batch)

        await asyncio.gather(*(drive(r) for r in range(3)))
        events = await replicas[0].read_events(0, 100_000)
        by_driver: dict[str, list[tuple[str, int]]] = {}
        for e in events:
            by_driver.setdefault(e.event.driver_id, []).append((e.event.type.value, e.event.at_ns))
        for d in drivers:
            got = by_driver[d]
            assert got[0][0] == "driver.online"
            kinds = [k for k, _ in got[1:]]
            # Each enter is followed by one exit, never two of a kind in a row.
            assert all(x != y for x, y in itertools.pairwise(kinds)), kinds
            assert kinds.count("zone.enter") >= 2, kinds
            times = [t for _, t in got]
            assert times == sorted(times)
        ids = [e.event_id for e in events]
        assert ids == sorted(set(ids))
    finally:
        for r in replicas:
            await r.close()


async def test_expire_events_removes_a_prefix_in_batches_and_keeps_the_newest(repo: Any) -> None:
    await repo.create_zone(circle_zone(), 1)
    for i in range(4):  # online, then an enter and an exit per round trip
        await repo.record_locations([fix("d1", 2 * i, lat=52.0), fix("d1", 2 * i + 1)])
    ids = [e.event_id for e in await repo.read_events(0, 100)]
    assert len(ids) == 9
    recorded = [e.recorded_at_ns for e in await repo.read_events(0, 100)]
    assert await repo.oldest_event_id() == ids[0]
    assert await repo.expire_events(recorded[0], 100) == 0  # nothing recorded before it
    assert await repo.expire_events(recorded[-1] + 1, 2) == 2  # a batch at a time
    assert await repo.oldest_event_id() == ids[2]
    while await repo.expire_events(recorded[-1] + 1, 2):
        pass
    assert [e.event_id for e in await repo.read_events(0, 100)] == [ids[-1]]  # the newest stays
    assert await repo.oldest_event_id() == await repo.last_event_id() == ids[-1]


async def test_events_and_their_update_commit_together_or_not_at_all(
    repo: Any, store: Store
) -> None:
    """The outbox: if logging the events fails, the update that caused them is not stored
    either (and is not acknowledged); once logging works again, it stores both."""
    await repo.create_zone(circle_zone(), 1)
    await repo.record_locations([fix("d1", 0)])
    before = await repo.last_event_id()
    if store.kind == "sqlite":
        fail_sql = [
            "CREATE TRIGGER no_events BEFORE INSERT ON events"
            " BEGIN SELECT RAISE(ABORT, 'events refused'); END"
        ]
        undo_sql = ["DROP TRIGGER no_events"]
    else:
        fail_sql = [
            "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'events refused'; END $$",
            "CREATE TRIGGER no_events BEFORE INSERT ON events"
            " FOR EACH ROW EXECUTE FUNCTION refuse_events()",
        ]
        undo_sql = ["DROP TRIGGER no_events ON events", "DROP FUNCTION refuse_events()"]

    async def run(statements: list[str]) -> None:
        if store.kind == "sqlite":
            for sql in statements:
                repo._connection.execute(sql)
        else:
            async with repo._pool.acquire() as con:
                for sql in statements:
                    await con.execute(sql)

    async def stored_fixes() -> int:
        sql = "SELECT count(*) FROM location_history WHERE driver_id = 'd1'"
        if store.kind == "sqlite":
            return int(repo._connection.execute(sql).fetchone()[0])
        return int(await repo._pool.fetchval(sql))

    await run(fail_sql)
    with pytest.raises(Exception, match=r"events refused|unavailable|Unavailable"):
        await repo.record_locations([fix("d1", 10, lat=52.0)])
    assert await stored_fixes() == 1, "the update was stored without its events"
    assert await repo.last_event_id() == before
    await run(undo_sql)
    await repo.record_locations([fix("d1", 10, lat=52.0)])
    assert (await types_of(repo))[-1] == ("zone.enter", "d1", "z1")


class HandedOver:
    """An evaluator's listener that keeps what each commit handed over."""

    def __init__(self, evaluator: ZoneEvaluator) -> None:
        self.commits: list[list[LoggedEvent]] = []
        evaluator.add_listener(lambda events: self.commits.append(list(events)))

    @property
    def events(self) -> list[LoggedEvent]:
        return [e for commit in self.commits for e in commit]


async def test_each_commit_hands_over_its_events_as_the_log_returns_them(store: Store) -> None:
    """The listeners get, after each commit, exactly the events `read_events` returns for
    it (ids, recorded times, every field), in commit order: they need not read them back."""
    evaluator = ZoneEvaluator()
    handed = HandedOver(evaluator)
    repo = await store.open(evaluator)
    try:
        await repo.create_zone(circle_zone(dwell_s=60), 1)
        await repo.create_zone(circle_zone("z2"), 1)
        await repo.record_locations([fix("d1", 0), fix("d1", 10, lat=52.0)])  # one by one
        await repo.record_locations([fix("d1", 80, lat=52.0)])  # dwell
        await repo.record_locations([fix("d1", 90)])  # exit
        await repo.record_locations([fix("d1", 95)])  # nothing logged: nothing handed over
        # Many in one commit (PostgreSQL stages them by COPY): online and two enters each.
        await repo.record_locations([fix(f"m{i:02}", 0, lat=52.0) for i in range(40)])
        await repo.delete_zone("z2", 0, 2)
        await repo.record_locations([fix("m00", 1, lat=52.0)])  # exit of a deleted zone
        await repo.set_status("d1", Status.BUSY, T0 + 100 * S)
        await repo.set_status("s1", Status.AVAILABLE, T0)
        await repo.sweep_offline(T0 + 1000 * S, 30 * S)
        logged = await repo.read_events(0, 10_000)
        assert handed.events == logged
        assert [e.event for e in handed.events] == [e.event for e in logged]  # every field
        assert all(commit for commit in handed.commits)
        assert len(handed.commits) == 8
        assert {e.event.type for e in logged} == set(EventType)
    finally:
        await repo.close()


async def test_a_listener_that_fails_fails_neither_the_commit_nor_the_others(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The hand-over runs after the commit: a listener's bug must not turn a stored update
    into an error for its caller (who would resend it), nor starve the listeners after it."""
    evaluator = ZoneEvaluator()

    def broken(events: Sequence[LoggedEvent]) -> None:
        raise RuntimeError("a listener's bug")

    evaluator.add_listener(broken)
    handed = HandedOver(evaluator)
    repo = await store.open(evaluator)
    try:
        await repo.create_zone(circle_zone(), 1)
        recorded = await repo.record_locations([fix("d1", 0)])
        assert [x.driver_id for x in recorded] == ["d1"]
        assert handed.events == await repo.read_events(0, 100)
        assert handed.events
        assert "handing logged events to a listener" in caplog.text
    finally:
        await repo.close()


async def test_a_rolled_back_commit_hands_over_nothing(store: Store) -> None:
    evaluator = ZoneEvaluator()
    handed = HandedOver(evaluator)
    repo = await store.open(evaluator)
    try:
        await repo.create_zone(circle_zone(), 1)
        await repo.record_locations([fix("d1", 0)])
        assert len(handed.events) == 1
        # The events are inserted, then the statement fails: the transaction rolls back.
        if store.kind == "sqlite":
            repo._connection.execute(
                "CREATE TRIGGER no_events AFTER INSERT ON events"
                " BEGIN SELECT RAISE(ABORT, 'events refused'); END"
            )
        else:
            async with repo._pool.acquire() as con:
                await con.execute(
                    "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN RAISE EXCEPTION 'events refused'; END $$"
                )
                # Checked at COMMIT: every statement succeeded, the commit fails.
                await con.execute(
                    "CREATE CONSTRAINT TRIGGER no_events AFTER INSERT ON events"
                    " DEFERRABLE INITIALLY DEFERRED"
                    " FOR EACH ROW EXECUTE FUNCTION refuse_events()"
                )
        with pytest.raises(Exception, match=r"events refused|unavailable|Unavailable"):
            await repo.record_locations([fix("d1", 10, lat=52.0)])
        assert len(handed.events) == 1
        assert handed.events == await repo.read_events(0, 100)
    finally:
        await repo.close()


async def test_replicas_each_hand_over_their_own_events(postgres_url: str) -> None:
    """On PostgreSQL each replica hands over what it committed, ids as the log holds them;
    together they are the whole log (another replica's events are never handed over)."""
    evaluators = [ZoneEvaluator() for _ in range(3)]
    handed = [HandedOver(ev) for ev in evaluators]
    replicas = [
        await PostgresRepository.open(postgres_url, min_size=1, max_size=8, evaluator=ev)
        for ev in evaluators
    ]
    try:
        await replicas[0].create_zone(circle_zone(), 1)

        async def drive(r: int) -> None:
            for step in range(20):
                t = step * 3 + r
                lat = 52.0 if (t // 10) % 2 else FAR
                await replicas[r].record_locations([fix(f"d{i}", t, lat=lat) for i in range(12)])

        await asyncio.gather(*(drive(r) for r in range(3)))
        logged = {e.event_id: e for e in await replicas[0].read_events(0, 100_000)}
        mine = [h.events for h in handed]
        for events in mine:
            assert events == [logged[e.event_id] for e in events]
        assert sorted(e.event_id for events in mine for e in events) == sorted(logged)
    finally:
        for r in replicas:
            await r.close()
