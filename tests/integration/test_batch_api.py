"""DriverBatchService on a real grpc.aio server (the production interceptor chain with auth)
over a real SQLite file: batch lookups answer found and not_found in order, batched uploads
validate and count exactly as UploadLocations does, an acknowledged update is on disk, and a
driver token can read or write only its own driver through every message of a batch."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from driver_service._gen.driver.v1 import batch_pb2 as bpb
from driver_service._gen.driver.v1 import batch_pb2_grpc as bpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api import DriverServicer
from driver_service.api.batch_servicer import add_batch_service
from driver_service.api.rules import RULES
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.interceptors import AuthPolicy, server_interceptors
from driver_service.security import TokenIssuer, TokenValidator

SECRET = b"batch-api-test-secret-of-32-bytes!!!"
NOW_NS = time.time_ns()
#: See test_auth.py: pause before writing after a refused message, so the client sees the
#: server's status instead of grpc.aio's "Internal error from Core".
AFTER_VERDICT_S = 0.3


@dataclass
class Batch:
    stub: bpb_grpc.DriverBatchServiceStub
    seed_stub: pb_grpc.DriverServiceStub
    tracking: DriverTracking
    db_path: Path
    issuer: TokenIssuer

    def stored(self, driver_id: str) -> list[float]:
        """Latitudes on disk for `driver_id`, read through a connection of our own."""
        with sqlite3.connect(self.db_path) as db:
            rows = db.execute(
                "SELECT latitude FROM location_history WHERE driver_id = ? ORDER BY recorded_at_ns",
                (driver_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def service(self, *scopes: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.issuer.issue_service(scopes)}"),)

    def driver(self, driver_id: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.issuer.issue_driver(driver_id)}"),)


@pytest.fixture
async def batch(tmp_path: Path) -> AsyncIterator[Batch]:
    db_path = tmp_path / "store.sqlite3"
    repository = await SqliteRepository.open(db_path)
    tracking = DriverTracking(repository, MemoryBus())
    await tracking.start()
    policy = AuthPolicy(TokenValidator.from_secret(SECRET), rules=RULES)
    server = grpc.aio.server(interceptors=server_interceptors(policy))
    pb_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    add_batch_service(server, tracking)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Batch(
            bpb_grpc.DriverBatchServiceStub(channel),
            pb_grpc.DriverServiceStub(channel),
            tracking,
            db_path,
            TokenIssuer.from_secret(SECRET),
        )
    finally:
        await channel.close()
        await server.stop(0)
        await tracking.close()


def update(driver_id: str, latitude: float, offset_ns: int = 0) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(driver_id=driver_id, latitude=latitude, longitude=13.4)
    msg.timestamp.FromNanoseconds(NOW_NS - 10_000_000_000 + offset_ns)
    return msg


async def batches(*groups: Iterable[pb.LocationUpdate]) -> AsyncIterator[bpb.LocationBatch]:
    for group in groups:
        yield bpb.LocationBatch(updates=list(group))


async def seed(b: Batch, *driver_ids: str) -> None:
    """Give each driver one stored location (latitude = its position + 1)."""
    updates = [update(d, float(n + 1)) for n, d in enumerate(driver_ids)]
    summary = await b.stub.UploadLocationBatches(
        batches(updates), metadata=b.service("drivers:write"), timeout=10
    )
    assert summary.persisted_count == len(driver_ids)


async def expect_code(call: object, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()


# --- lookups ---------------------------------------------------------------------------


async def test_get_drivers_answers_found_and_not_found_in_request_order(batch: Batch) -> None:
    await seed(batch, "d1", "d2", "d3")
    request = bpb.GetDriversRequest(driver_ids=["d3", "ghost", "d1", "d3", "nobody"])
    response = await batch.stub.GetDrivers(
        request, metadata=batch.service("drivers:read"), timeout=10
    )
    assert [d.driver_id for d in response.drivers] == ["d3", "d1", "d3"]
    assert [d.latitude for d in response.drivers] == [3.0, 1.0, 3.0]
    assert list(response.not_found) == ["ghost", "nobody"]
    # Each entry is exactly what GetDriver answers for that driver.
    single = await batch.seed_stub.GetDriver(
        pb.GetDriverRequest(driver_id="d1"), metadata=batch.service("drivers:read"), timeout=10
    )
    assert response.drivers[1] == single


async def test_get_drivers_with_an_invalid_id_is_invalid_argument(batch: Batch) -> None:
    request = bpb.GetDriversRequest(driver_ids=["d1", "not a valid id!"])
    await expect_code(
        batch.stub.GetDrivers(request, metadata=batch.service("drivers:read"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_lookup_stream_answers_each_request_in_order(batch: Batch) -> None:
    await seed(batch, "a", "b")

    async def requests() -> AsyncIterator[bpb.GetDriversRequest]:
        yield bpb.GetDriversRequest(driver_ids=["a"])
        yield bpb.GetDriversRequest(driver_ids=["x", "b"])
        yield bpb.GetDriversRequest()

    call = batch.stub.LookupDrivers(requests(), metadata=batch.service("drivers:read"))
    answers = [r async for r in call]
    assert [[d.driver_id for d in r.drivers] for r in answers] == [["a"], ["b"], []]
    assert [list(r.not_found) for r in answers] == [[], ["x"], []]


# --- batched upload ----------------------------------------------------------------------


def mixed_updates() -> list[list[pb.LocationUpdate]]:
    """Valid updates with invalid ones in between: latitude out of range, bad driver id,
    speed out of range; three batches, one empty."""
    bad_speed = update("u1", 4.0, 4)
    bad_speed.speed_mps = -5.0
    return [
        [update("u1", 1.0, 1), update("u1", 91.0, 2), update("u2", 2.0, 1)],
        [],
        [update("bad id", 3.0, 3), bad_speed, update("u1", 5.0, 5)],
    ]


async def test_batched_upload_counts_and_validates_like_upload_locations(batch: Batch) -> None:
    write = batch.service("drivers:write")
    summary = await batch.stub.UploadLocationBatches(
        batches(*mixed_updates()), metadata=write, timeout=10
    )
    assert (summary.received_count, summary.persisted_count) == (6, 3)
    assert summary.session_id.startswith("upl-")

    async def one_by_one() -> AsyncIterator[pb.LocationUpdate]:
        for group in mixed_updates():
            for u in group:
                shifted = pb.LocationUpdate()
                shifted.CopyFrom(u)
                shifted.timestamp.FromNanoseconds(u.timestamp.ToNanoseconds() + 1_000)
                yield shifted

    seed_summary = await batch.seed_stub.UploadLocations(one_by_one(), metadata=write, timeout=10)
    assert (seed_summary.received_count, seed_summary.persisted_count) == (6, 3)


async def test_acknowledged_batched_updates_are_on_disk(batch: Batch) -> None:
    groups = [[update("disk", float(b * 10 + i), b * 10 + i) for i in range(10)] for b in range(5)]
    summary = await batch.stub.UploadLocationBatches(
        batches(*groups), metadata=batch.service("drivers:write"), timeout=10
    )
    assert summary.persisted_count == 50
    # No flush: the acknowledgement itself promises the commit.
    assert batch.stored("disk") == [float(n) for n in range(50)]


# --- auth ------------------------------------------------------------------------------


async def test_service_tokens_need_read_for_lookups_and_write_for_uploads(batch: Batch) -> None:
    request = bpb.GetDriversRequest(driver_ids=["d1"])
    await expect_code(
        batch.stub.GetDrivers(request, metadata=batch.service("drivers:write"), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_code(batch.stub.GetDrivers(request, timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    await expect_code(
        batch.stub.UploadLocationBatches(
            batches([update("w", 1.0)]), metadata=batch.service("drivers:read"), timeout=10
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert batch.stored("w") == []


async def test_driver_token_reads_only_its_own_driver(batch: Batch) -> None:
    await seed(batch, "me", "other")
    own = await batch.stub.GetDrivers(
        bpb.GetDriversRequest(driver_ids=["me", "me"]), metadata=batch.driver("me"), timeout=10
    )
    assert [d.driver_id for d in own.drivers] == ["me", "me"]
    await expect_code(
        batch.stub.GetDrivers(
            bpb.GetDriversRequest(driver_ids=["me", "other"]),
            metadata=batch.driver("me"),
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_driver_token_uploads_only_batches_of_its_own_driver(batch: Batch) -> None:
    mine = await batch.stub.UploadLocationBatches(
        batches([update("me", 1.0, 1), update("me", 2.0, 2)]),
        metadata=batch.driver("me"),
        timeout=10,
    )
    assert mine.persisted_count == 2
    await expect_code(
        batch.stub.UploadLocationBatches(
            batches([update("me", 3.0, 3), update("victim", 9.0, 3)]),
            metadata=batch.driver("me"),
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await batch.tracking.writer.flush()
    assert batch.stored("victim") == []
    # The refused batch is refused whole: its own update did not get through either.
    assert batch.stored("me") == [1.0, 2.0]


async def test_a_malformed_id_is_judged_as_for_any_token(batch: Batch) -> None:
    """A malformed id names no driver: a driver token's lookup naming its own driver and a
    malformed one is INVALID_ARGUMENT as for a service token (not PERMISSION_DENIED), and
    its upload counts the malformed update as invalid."""
    await seed(batch, "me")
    answers = []
    for metadata in (batch.driver("me"), batch.service("drivers:read")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await batch.stub.GetDrivers(
                bpb.GetDriversRequest(driver_ids=["me", ""]), metadata=metadata, timeout=10
            )
        answers.append((info.value.code(), info.value.details()))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.INVALID_ARGUMENT

    summary = await batch.stub.UploadLocationBatches(
        batches([update("", 5.0, 5), update("me", 6.0, 6), update("bad id", 7.0, 7)]),
        metadata=batch.driver("me"),
        timeout=10,
    )
    assert (summary.received_count, summary.persisted_count) == (3, 1)
    # Two well-formed drivers are still refused whole, whatever else the batch holds.
    await expect_code(
        batch.stub.UploadLocationBatches(
            batches([update("", 8.0, 8), update("me", 8.0, 8), update("victim", 9.0, 9)]),
            metadata=batch.driver("me"),
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
