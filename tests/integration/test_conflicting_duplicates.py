"""One fix per driver and timestamp, over a real server built as production builds it: the
first stored wins for good, an identical resend is acknowledged, and a different fix for a
stored driver and timestamp is refused: not counted in persisted_count, never GetDriver's
location, never in history, never sent to a watcher. Within a stream, across streams of one
group commit, across commits; UploadLocations, the batch API and DriverSession alike."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest

from driver_service._gen.driver.v1 import batch_pb2 as bpb
from driver_service._gen.driver.v1 import batch_pb2_grpc as bpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.server.running import RunningServer
from tests.helpers.grpc_calls import BASE_NS, NANOS, fix, get, ts_ns, upload
from tests.helpers.waiting import eventually

AT = BASE_NS + 7 * NANOS + 123


def stored(db: Path, driver_id: str) -> list[tuple[int, float, float, float, float]]:
    """(time, latitude, longitude, speed, heading) of the driver's committed history rows,
    read through a connection of our own."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT recorded_at_ns, latitude, longitude, speed_mps, heading_degrees"
            " FROM location_history WHERE driver_id = ? ORDER BY recorded_at_ns",
            (driver_id,),
        ).fetchall()
    return [(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows]


def counts(summary: pb.UploadSummary) -> tuple[int, int]:
    return summary.received_count, summary.persisted_count


async def latitude_of(stub: pb_grpc.DriverServiceStub, driver_id: str) -> float:
    return (await get(stub, driver_id)).latitude


async def test_three_fixes_with_one_timestamp_in_one_stream_persist_one(
    stub: pb_grpc.DriverServiceStub, server: RunningServer, sqlite_path: Path
) -> None:
    """The reported bug: three different fixes, one timestamp, one stream."""
    summary = await upload(
        stub, [fix("c-1", 1.0, 2.0, AT), fix("c-1", 3.0, 4.0, AT), fix("c-1", 5.0, 6.0, AT)]
    )

    assert counts(summary) == (3, 1)
    assert await latitude_of(stub, "c-1") == 1.0
    assert stored(sqlite_path, "c-1") == [(AT, 1.0, 2.0, 5.0, 90.0)]


async def test_identical_resends_count_and_conflicts_do_not_in_one_stream(
    stub: pb_grpc.DriverServiceStub, sqlite_path: Path
) -> None:
    first = fix("c-2", 1.0, 2.0, AT)
    summary = await upload(
        stub,
        [
            first,
            fix("c-2", 1.0, 2.0, AT),  # the same fix again: counts
            fix("c-2", 1.0, 2.0, AT, speed=6.0),  # only the speed differs: a conflict
            fix("c-2", 1.0, 2.0, AT, heading=91.0),  # only the heading differs: a conflict
            fix("c-2", 1.0, 2.0, AT),
        ],
    )

    assert counts(summary) == (5, 3)
    assert stored(sqlite_path, "c-2") == [(AT, 1.0, 2.0, 5.0, 90.0)]


async def test_across_commits_the_first_stored_fix_stays_and_resends_count(
    stub: pb_grpc.DriverServiceStub, sqlite_path: Path
) -> None:
    assert counts(await upload(stub, [fix("c-3", 1.0, 2.0, AT), fix("c-3", 8.0, 9.0, AT + 1)])) == (
        2,
        2,
    )
    # Later streams: a conflict with an older stored fix, one with the current location,
    # then identical resends of both, then a new fix.
    later = await upload(
        stub,
        [
            fix("c-3", 50.0, 2.0, AT),
            fix("c-3", 60.0, 9.0, AT + 1),
            fix("c-3", 1.0, 2.0, AT),
            fix("c-3", 8.0, 9.0, AT + 1),
        ],
    )
    assert counts(later) == (4, 2)
    driver = await get(stub, "c-3")
    assert (driver.latitude, driver.longitude) == (8.0, 9.0)
    assert counts(
        await upload(stub, [fix("c-3", 70.0, 9.0, AT + 1), fix("c-3", 7.0, 7.0, AT + 2)])
    ) == (
        2,
        1,
    )

    assert await latitude_of(stub, "c-3") == 7.0
    assert [row[:2] for row in stored(sqlite_path, "c-3")] == [
        (AT, 1.0),
        (AT + 1, 8.0),
        (AT + 2, 7.0),
    ]


async def test_conflicting_streams_in_one_group_commit_count_only_the_winner(
    stub: pb_grpc.DriverServiceStub, server: RunningServer, sqlite_path: Path
) -> None:
    """Another connection holds the SQLite write lock, so the writer's commit of an
    unrelated update waits; meanwhile two streams queue different fixes for one driver and
    timestamp into the same next commit. Whichever was queued first wins, and only it counts."""
    writer = server.tracking.writer
    blocker = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        held = asyncio.create_task(upload(stub, [fix("c-held", 1.0, 1.0, AT)]))
        await asyncio.sleep(0.3)  # the writer hands that update to the store, which waits
        assert writer.queued == 0
        assert not held.done()
        calls = [
            asyncio.create_task(upload(stub, [fix("c-4", lat, 2.0, AT)])) for lat in (1.0, 3.0)
        ]
        await eventually(lambda: writer.queued == 2, what="both fixes queued in one batch")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    summaries = await asyncio.gather(held, *calls)

    assert counts(summaries[0]) == (1, 1)
    persisted = {lat: s.persisted_count for lat, s in zip((1.0, 3.0), summaries[1:], strict=True)}
    assert sorted(persisted.values()) == [0, 1]
    (winner,) = (lat for lat, n in persisted.items() if n == 1)
    assert await latitude_of(stub, "c-4") == winner
    assert stored(sqlite_path, "c-4") == [(AT, winner, 2.0, 5.0, 90.0)]


async def test_a_refused_fix_never_reaches_a_watcher(stub: pb_grpc.DriverServiceStub) -> None:
    """A conflict in the same batch as its winner, newer than anything before: only the
    winner is published (a watcher drops nothing older than what it was sent, so a refused
    fix would show up here as the next message)."""
    await upload(stub, [fix("c-5", 1.0, 1.0, AT)])
    watch = stub.StreamLocation(pb.StreamLocationRequest(driver_id="c-5"), timeout=10)
    try:
        assert (await watch.read()).latitude == 1.0
        summary = await upload(
            stub,
            [
                fix("c-5", 2.0, 2.0, AT + 1),
                fix("c-5", 9.0, 9.0, AT + 1),
                fix("c-5", 3.0, 3.0, AT + 2),
            ],
        )
        assert counts(summary) == (3, 2)
        seen = [await asyncio.wait_for(watch.read(), 5) for _ in range(2)]
    finally:
        watch.cancel()
    assert [(ts_ns(m.timestamp) - AT, m.latitude) for m in seen] == [(1, 2.0), (2, 3.0)]


async def batches(*groups: Iterable[pb.LocationUpdate]) -> AsyncIterator[bpb.LocationBatch]:
    for group in groups:
        yield bpb.LocationBatch(updates=list(group))


async def test_the_batch_api_counts_like_upload_locations(
    channel: grpc.aio.Channel, stub: pb_grpc.DriverServiceStub, sqlite_path: Path
) -> None:
    batch_stub = bpb_grpc.DriverBatchServiceStub(channel)
    x = fix("c-6", 1.0, 2.0, AT)
    summary = await batch_stub.UploadLocationBatches(
        batches([x, fix("c-6", 4.0, 2.0, AT), x], [fix("c-7", 1.0, 1.0, AT)]), timeout=10
    )
    assert counts(summary) == (4, 3)
    again = await batch_stub.UploadLocationBatches(
        batches([x, fix("c-6", 5.0, 2.0, AT), fix("c-6", 6.0, 2.0, AT + 1)]), timeout=10
    )
    assert counts(again) == (3, 2)

    assert await latitude_of(stub, "c-6") == 6.0
    assert [row[:2] for row in stored(sqlite_path, "c-6")] == [(AT, 1.0), (AT + 1, 6.0)]


async def test_session_locations_keep_the_first_stored_fix(
    stub: pb_grpc.DriverServiceStub, sqlite_path: Path
) -> None:
    session = stub.DriverSession(timeout=10)
    for lat in (1.0, 2.0):  # one timestamp: the second is refused
        await session.write(pb.DriverEvent(location=fix("c-8", lat, 2.0, AT + 1)))
    await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
    assert (await session.read()).WhichOneof("command") == "pong"
    await session.done_writing()
    assert await session.read() == grpc.aio.EOF  # the session committed what it accepted

    assert await latitude_of(stub, "c-8") == 1.0
    assert [row[:2] for row in stored(sqlite_path, "c-8")] == [(AT + 1, 1.0)]


@pytest.mark.parametrize("copies", [2, 50])
async def test_resending_a_whole_stream_is_acknowledged_whole(
    stub: pb_grpc.DriverServiceStub, copies: int
) -> None:
    """A client that lost the summary resends the stream: every update is stored as sent."""
    stream = [fix("c-9", 1.0 + i, 2.0, AT + i) for i in range(copies)]
    assert counts(await upload(stub, stream)) == (copies, copies)
    assert counts(await upload(stub, stream)) == (copies, copies)
