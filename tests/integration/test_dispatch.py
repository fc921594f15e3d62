"""Dispatch over a real socket: a real grpc.aio server (DriverService + DispatchService, the
production interceptor chain with the dispatch rules), real SQLite, real tokens; and the
Redis GEO index against the brute-force oracle on a private redis-server."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.redis.connection import create_redis_client, redis_guard
from driver_service.adapters.redis.dispatch_index import RedisDriverIndex
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api import DriverServicer
from driver_service.api.dispatch_servicer import DispatchServicer
from driver_service.api.rules import RULES
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.dispatch.indexing import IndexingBus, IndexingRepository
from driver_service.dispatch.memory_index import MemoryDriverIndex
from driver_service.dispatch.service import Dispatch
from driver_service.domain import Driver, Location, Status
from driver_service.interceptors import AuthPolicy, server_interceptors
from driver_service.security import TokenIssuer, TokenValidator
from tests.helpers.fleets import NOW, fleets, oracle
from tests.helpers.redis import RedisServer

SECRET = b"dispatch-test-secret-of-32-bytes!!!!"
ISSUER = TokenIssuer.from_secret(SECRET)
DISPATCHER = ISSUER.issue_service(["dispatch"])
WRITER = ISSUER.issue_service(["drivers:write"])


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Stack:
    drivers: pb_grpc.DriverServiceStub
    dispatch: dpb_grpc.DispatchServiceStub
    service: Dispatch
    tracking: DriverTracking

    def session(
        self, driver_id: str
    ) -> grpc.aio.StreamStreamCall[pb.DriverEvent, pb.ServerCommand]:
        return self.drivers.DriverSession(
            metadata=bearer(ISSUER.issue_driver(driver_id)), timeout=20
        )

    async def offer(
        self, driver_id: str, ttl_s: float = 10.0, offer_id: str = ""
    ) -> dpb.SendCommandResponse:
        ttl = Duration()
        ttl.FromNanoseconds(int(ttl_s * 1e9))
        request = dpb.SendCommandRequest(
            driver_id=driver_id,
            command=pb.ServerCommand(
                ride_offer=pb.RideOffer(offer_id=offer_id, pickup_address="Alexanderplatz 1")
            ),
            ttl=ttl,
        )
        return await self.dispatch.SendCommand(request, metadata=bearer(DISPATCHER), timeout=5)

    async def status(self, command_id: str, wait: bool = False) -> dpb.CommandStatus:
        return await self.dispatch.GetCommandStatus(
            dpb.GetCommandStatusRequest(command_id=command_id, wait_for_outcome=wait),
            metadata=bearer(DISPATCHER),
            timeout=5,
        )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    index = MemoryDriverIndex()
    store = await SqliteRepository.open(tmp_path / "store.sqlite3")
    repository = IndexingRepository(store, index)
    tracking = DriverTracking(repository, IndexingBus(MemoryBus(), index, repository))
    await tracking.start()
    dispatch = Dispatch(tracking, index, stale_after_s=120)
    await dispatch.start()
    policy = AuthPolicy(TokenValidator.from_secret(SECRET), rules=RULES)
    server = grpc.aio.server(interceptors=server_interceptors(policy))
    pb_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    dpb_grpc.add_DispatchServiceServicer_to_server(DispatchServicer(dispatch), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(
            pb_grpc.DriverServiceStub(channel),
            dpb_grpc.DispatchServiceStub(channel),
            dispatch,
            tracking,
        )
    finally:
        await channel.close()
        await server.stop(0)
        await dispatch.close()
        await tracking.close()


def status_event(driver_id: str, status: str = "AVAILABLE") -> pb.DriverEvent:
    return pb.DriverEvent(
        status_change=pb.DriverStatusChange(driver_id=driver_id, new_status=status)
    )


async def bind(
    stack: Stack,
    session: grpc.aio.StreamStreamCall[pb.DriverEvent, pb.ServerCommand],
    driver_id: str,
) -> None:
    """Open the session for the driver and wait until the server has bound it."""
    await session.write(status_event(driver_id))
    await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
    reply = await session.read()
    assert reply.WhichOneof("command") == "pong"
    assert stack.tracking.has_session(driver_id)


# --- delivery ---------------------------------------------------------------------------


async def test_offer_to_a_connected_driver_is_pushed_on_its_session(stack: Stack) -> None:
    """Each offer reaches the open session as SendCommand returns DELIVERED. How fast is a
    target for the bench, not for this test (it runs beside other tiers on a busy machine)."""
    session = stack.session("d1")
    await bind(stack, session, "d1")
    latencies = []
    for n in range(100):
        start = time.perf_counter()
        sent = await stack.offer("d1", offer_id=f"o{n}")
        command = await session.read()
        latencies.append((time.perf_counter() - start) * 1000)
        assert sent.state == dpb.COMMAND_STATE_DELIVERED
        assert command.ride_offer.offer_id == f"o{n}"
        assert command.ride_offer.pickup_address == "Alexanderplatz 1"
    q = statistics.quantiles(latencies, n=100)
    print(f"SendCommand -> offer on the driver's session: p50={q[49]:.2f} ms p99={q[98]:.2f} ms")
    session.cancel()


async def test_the_drivers_answer_reaches_the_caller(stack: Stack) -> None:
    session = stack.session("d1")
    await bind(stack, session, "d1")
    driver = bearer(ISSUER.issue_driver("d1"))
    for accepted, outcome in [
        (True, dpb.COMMAND_STATE_ACCEPTED),
        (False, dpb.COMMAND_STATE_DECLINED),
    ]:
        sent = await stack.offer("d1")
        assert sent.command_id.startswith("ofr-")
        offer = (await session.read()).ride_offer
        assert offer.offer_id == sent.command_id
        waiting = asyncio.ensure_future(stack.status(sent.command_id, wait=True))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the caller waits for the driver
        await stack.dispatch.AnswerOffer(
            dpb.AnswerOfferRequest(offer_id=offer.offer_id, driver_id="d1", accepted=accepted),
            metadata=driver,
            timeout=5,
        )
        final = await waiting
        assert final.state == outcome
        assert final.HasField("settled_at")
    session.cancel()


async def test_only_the_offers_driver_may_answer_it(stack: Stack) -> None:
    session = stack.session("d1")
    await bind(stack, session, "d1")
    sent = await stack.offer("d1")
    await session.read()
    # Another driver naming itself: the offer was not sent to it.
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await stack.dispatch.AnswerOffer(
            dpb.AnswerOfferRequest(offer_id=sent.command_id, driver_id="d2", accepted=True),
            metadata=bearer(ISSUER.issue_driver("d2")),
            timeout=5,
        )
    assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Another driver naming d1: its token may act only for itself.
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await stack.dispatch.AnswerOffer(
            dpb.AnswerOfferRequest(offer_id=sent.command_id, driver_id="d1", accepted=True),
            metadata=bearer(ISSUER.issue_driver("d2")),
            timeout=5,
        )
    assert forged.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await stack.status(sent.command_id)).state == dpb.COMMAND_STATE_DELIVERED
    session.cancel()


@pytest.mark.parametrize("bad_id", ["", "no spaces allowed"])
async def test_answering_with_a_malformed_id_is_invalid_argument_whatever_the_token(
    stack: Stack, bad_id: str
) -> None:
    answers = []
    for token in (ISSUER.issue_driver("d1"), WRITER):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.dispatch.AnswerOffer(
                dpb.AnswerOfferRequest(offer_id="ofr-1", driver_id=bad_id, accepted=True),
                metadata=bearer(token),
                timeout=5,
            )
        answers.append((info.value.code(), info.value.details()))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert (answers[0][1] or "").startswith("driver_id ")


async def test_offer_to_an_offline_driver_is_queued_and_arrives_when_its_session_opens(
    stack: Stack,
) -> None:
    sent = await stack.offer("d9", ttl_s=10)
    assert sent.state == dpb.COMMAND_STATE_QUEUED
    session = stack.session("d9")
    await session.write(status_event("d9"))
    command = await asyncio.wait_for(session.read(), 2)
    assert command.ride_offer.offer_id == sent.command_id
    assert (await stack.status(sent.command_id)).state == dpb.COMMAND_STATE_DELIVERED
    session.cancel()


async def test_after_ttl_a_queued_offer_is_expired_and_never_delivered(stack: Stack) -> None:
    sent = await stack.offer("d7", ttl_s=0.3)
    assert sent.state == dpb.COMMAND_STATE_QUEUED
    final = await stack.status(sent.command_id, wait=True)
    assert final.state == dpb.COMMAND_STATE_EXPIRED
    assert not final.HasField("delivered_at")
    session = stack.session("d7")
    await bind(stack, session, "d7")  # the first reply is the pong: no offer came before it
    await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=2)))
    assert (await session.read()).WhichOneof("command") == "pong"
    session.cancel()


async def test_a_delivered_offer_nobody_answers_times_out(stack: Stack) -> None:
    session = stack.session("d1")
    await bind(stack, session, "d1")
    sent = await stack.offer("d1", ttl_s=0.3)
    await session.read()
    assert (await stack.status(sent.command_id, wait=True)).state == dpb.COMMAND_STATE_TIMED_OUT
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stack.dispatch.AnswerOffer(
            dpb.AnswerOfferRequest(offer_id=sent.command_id, driver_id="d1", accepted=True),
            metadata=bearer(ISSUER.issue_driver("d1")),
            timeout=5,
        )
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    session.cancel()


# --- authorization ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [ISSUER.issue_driver("d1"), WRITER, ISSUER.issue_service(["drivers:read"])],
    ids=["driver", "drivers-write", "drivers-read"],
)
async def test_dispatch_needs_the_dispatch_scope_and_a_driver_can_never_call_it(
    stack: Stack, token: str
) -> None:
    calls = [
        stack.dispatch.FindNearbyDrivers(
            dpb.FindNearbyDriversRequest(latitude=52.5, longitude=13.4, radius_m=2000),
            metadata=bearer(token),
            timeout=5,
        ),
        stack.dispatch.SendCommand(
            dpb.SendCommandRequest(
                driver_id="d1", command=pb.ServerCommand(ride_offer=pb.RideOffer(offer_id="x"))
            ),
            metadata=bearer(token),
            timeout=5,
        ),
        stack.dispatch.GetCommandStatus(
            dpb.GetCommandStatusRequest(command_id="x"), metadata=bearer(token), timeout=5
        ),
        stack.dispatch.DescribeDriver(
            dpb.DescribeDriverRequest(driver_id="d1"), metadata=bearer(token), timeout=5
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stack.service.offers.queued("d1") == 0  # the refused offer was never queued


# --- nearby search through the real ingest path -----------------------------------------


async def test_nearby_follows_uploads_status_changes_and_staleness(stack: Stack) -> None:
    now_ns = time.time_ns()

    def update(driver_id: str, lat: float, lon: float, age_s: float = 0) -> pb.LocationUpdate:
        msg = pb.LocationUpdate(driver_id=driver_id, latitude=lat, longitude=lon)
        msg.timestamp.FromNanoseconds(now_ns - int(age_s * 1e9))
        return msg

    async def updates() -> AsyncIterator[pb.LocationUpdate]:
        yield update("near", 52.5205, 13.4050)  # ~40 m from the query point
        yield update("far", 52.5400, 13.4050)  # ~2.2 km
        yield update("busy", 52.5202, 13.4050)
        yield update("offline", 52.5201, 13.4050)
        yield update("stale", 52.5201, 13.4049, age_s=180)
        yield update("antimeridian", -16.5, 179.9995)

    summary = await stack.drivers.UploadLocations(updates(), metadata=bearer(WRITER), timeout=5)
    assert summary.persisted_count == 6
    for driver_id, status in [("busy", "BUSY"), ("offline", "OFFLINE")]:
        session = stack.session(driver_id)
        await session.write(status_event(driver_id, status))
        await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
        await session.read()
        session.cancel()
    await stack.tracking.writer.flush()

    async def find(lat: float, lon: float, radius: float, *statuses: str) -> list[str]:
        reply = await stack.dispatch.FindNearbyDrivers(
            dpb.FindNearbyDriversRequest(
                latitude=lat, longitude=lon, radius_m=radius, statuses=list(statuses)
            ),
            metadata=bearer(DISPATCHER),
            timeout=5,
        )
        assert [d.distance_m for d in reply.drivers] == sorted(d.distance_m for d in reply.drivers)
        return [d.driver_id for d in reply.drivers]

    assert await find(52.5201, 13.4050, 2000) == ["near"]
    assert await find(52.5201, 13.4050, 2000, "AVAILABLE", "BUSY") == ["busy", "near"]
    assert await find(52.5201, 13.4050, 3000) == ["near", "far"]
    assert await find(-16.5, -179.9995, 200) == ["antimeridian"]
    stale = await stack.dispatch.DescribeDriver(
        dpb.DescribeDriverRequest(driver_id="stale"), metadata=bearer(DISPATCHER), timeout=5
    )
    assert stale.stale
    assert stale.status == "AVAILABLE"
    assert await stack.service.sweep() == 1


# --- the Redis GEO index against the oracle ---------------------------------------------


@settings(max_examples=120, deadline=None)
@given(
    fleet=fleets(),
    radius_m=st.floats(1.0, 100_000.0),
    limit=st.integers(1, 25),
    max_age_s=st.sampled_from([30, 120]),
)
def test_redis_index_matches_brute_force(
    redis_server: RedisServer,
    fleet: tuple[tuple[float, float], list[Driver]],
    radius_m: float,
    limit: int,
    max_age_s: int,
) -> None:
    (lat, lon), drivers = fleet
    wanted = {Status.AVAILABLE, Status.BUSY}
    cutoff = NOW - max_age_s * 10**9

    async def search() -> list[tuple[str, float]]:
        # An oracle test, not a timeout test: generous bounds, so a loaded machine's slow
        # connect is not read as Redis hung.
        client = create_redis_client(redis_server.url, timeout_s=30)
        try:
            index = RedisDriverIndex(
                client, f"t{uuid.uuid4().hex[:12]}:", guard=redis_guard(client, 30)
            )
            await index.put(drivers)
            found = await index.nearby(lat, lon, radius_m, limit, wanted, cutoff)
            return [(n.driver.driver_id, n.distance_m) for n in found]
        finally:
            await client.aclose()

    redis_server.start()
    got = asyncio.run(search())
    assert got == oracle(drivers, lat, lon, radius_m, limit, wanted, cutoff)


@pytest.mark.parametrize("longitude", [179.99999999999997, 180.0, 179.9999999999])
def test_redis_index_finds_a_driver_a_hair_west_of_the_antimeridian(
    redis_server: RedisServer, longitude: float
) -> None:
    """Redis 7.0 stores 179.99999999999997 as 180, which no GEOSEARCH finds (hypothesis found
    it): such a driver must still be found, from either side of the antimeridian."""
    driver = Driver("edge", Status.AVAILABLE, Location("edge", 0.0, longitude, 0, 0, NOW), NOW)
    wanted = {Status.AVAILABLE}

    async def search(lat: float, lon: float) -> list[str]:
        client = create_redis_client(redis_server.url)
        try:
            index = RedisDriverIndex(client, f"t{uuid.uuid4().hex[:12]}:")
            await index.put([driver])
            found = await index.nearby(lat, lon, 100_000.0, 21, wanted, NOW - 30 * 10**9)
            return [n.driver.driver_id for n in found]
        finally:
            await client.aclose()

    redis_server.start()
    for lat, lon in [(0.0, 179.35703586544386), (0.0, -179.5), (0.0, longitude)]:
        assert asyncio.run(search(lat, lon)) == ["edge"], (lat, lon)
