"""HistoryService over a real gRPC socket with real tokens, on SQLite and PostgreSQL: trail
order and chunking, thinning within tolerance, trips of a recorded-style route, every bad
range, NOT_FOUND, every authorization rule, erasure."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc
from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api.history_servicer import HistoryServicer
from driver_service.api.rules import RULES
from driver_service.app.history import MAX_SPAN_NS, TRAIL_CHUNK_POINTS, LocationHistory
from driver_service.domain import Location
from driver_service.domain.geo import EARTH_RADIUS_M
from driver_service.interceptors import AuthPolicy, server_interceptors
from driver_service.security import TokenIssuer, TokenValidator
from tests.helpers.synthetic_routes import START_NS, Route

SECRET = b"history-test-secret-of-32-bytes-long!!"
S = 10**9


def ts(ns: int) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


@dataclass
class Api:
    stub: hpb_grpc.HistoryServiceStub
    store: Any
    issuer: TokenIssuer

    def auth(self, token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    @property
    def reader(self) -> tuple[tuple[str, str], ...]:
        return self.auth(self.issuer.issue_service(["history:read"]))

    async def trail(self, driver_id: str, since: int, until: int, **kw: Any) -> list[Any]:
        call = self.stub.GetTrail(
            hpb.GetTrailRequest(driver_id=driver_id, since=ts(since), until=ts(until), **kw),
            metadata=self.reader,
        )
        return [chunk async for chunk in call]


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    if store_url.startswith("postgres"):
        store: Any = await PostgresRepository.open(store_url, min_size=1, max_size=4)
        await store.prepare_history(START_NS)
    else:
        store = await SqliteRepository.open(store_url)
    policy = AuthPolicy(TokenValidator.from_secret(SECRET), RULES)
    server = grpc.aio.server(interceptors=server_interceptors(policy))
    hpb_grpc.add_HistoryServiceServicer_to_server(HistoryServicer(LocationHistory(store)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Api(hpb_grpc.HistoryServiceStub(channel), store, TokenIssuer.from_secret(SECRET))
    finally:
        await channel.close()
        await server.stop(0)
        await store.close()


def segment_distance_m(x: Location, a: Any, b: Any) -> float:
    """Distance from fix x to the segment a-b, on the equirectangular plane around x."""
    k = math.cos(math.radians(x.latitude)) * EARTH_RADIUS_M * math.pi / 180
    m = EARTH_RADIUS_M * math.pi / 180
    ax, ay = (a.longitude - x.longitude) * k, (a.latitude - x.latitude) * m
    bx, by = (b.longitude - x.longitude) * k, (b.latitude - x.latitude) * m
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + t * dx, ay + t * dy)


def day_route() -> Route:
    """A recorded-style morning: parked with jitter, a drive, a tunnel, a stop, a drive."""
    return (
        Route(seed=7)
        .park(600, jitter_m=8.0)
        .drive(900, 12.0, 45.0)
        .silence(90, moved_m=1000.0, bearing_deg=45.0)
        .drive(600, 12.0, 45.0)
        .park(900, jitter_m=8.0)
        .drive(1200, 14.0, 200.0)
        .park(300, jitter_m=5.0)
    )


async def test_trail_is_in_fix_time_order_in_chunks(api: Api) -> None:
    fixes = day_route().fixes
    shuffled = fixes[1::2] + fixes[::2]  # late arrivals
    await api.store.record_locations(shuffled[:3000])
    await api.store.record_locations(shuffled[3000:] + fixes[:100])  # duplicates too
    chunks = await api.trail("d1", START_NS, fixes[-1].recorded_at_ns + 1)
    assert len(chunks) > 1
    assert all(len(c.points) <= TRAIL_CHUNK_POINTS for c in chunks)
    got = [p.recorded_at.ToNanoseconds() for c in chunks for p in c.points]
    assert got == [x.recorded_at_ns for x in fixes]


async def test_thinning_keeps_endpoints_and_shape_within_tolerance(api: Api) -> None:
    fixes = day_route().fixes
    await api.store.record_locations(fixes)
    chunks = await api.trail(
        "d1", START_NS, fixes[-1].recorded_at_ns + 1, simplify_tolerance_m=15.0
    )
    kept = [p for c in chunks for p in c.points]
    assert 2 < len(kept) < len(fixes) // 10
    assert kept[0].recorded_at.ToNanoseconds() == fixes[0].recorded_at_ns
    assert kept[-1].recorded_at.ToNanoseconds() == fixes[-1].recorded_at_ns
    # Every fix lies within tolerance of the segment between the kept fixes around it
    # (distance to the segment on the fix's local plane, in metres).
    times = [p.recorded_at.ToNanoseconds() for p in kept]
    worst = 0.0
    j = 0
    for x in fixes:
        while j + 1 < len(times) - 1 and times[j + 1] <= x.recorded_at_ns:
            j += 1
        worst = max(worst, segment_distance_m(x, kept[j], kept[j + 1]))
    assert worst <= 15.0 * 1.01 + 0.5
    capped = await api.trail("d1", START_NS, fixes[-1].recorded_at_ns + 1, max_points=50)
    assert 2 <= sum(len(c.points) for c in capped) <= 50


async def test_trips_and_summary_of_a_recorded_route(api: Api) -> None:
    fixes = day_route().fixes
    await api.store.record_locations(fixes)
    request = {"driver_id": "d1", "since": ts(START_NS), "until": ts(fixes[-1].recorded_at_ns + 1)}
    trips = await api.stub.GetTrips(hpb.GetTripsRequest(**request), metadata=api.reader)
    # Jitter while parked invents no trip; the 90 s tunnel is no stop.
    assert len(trips.trips) == 2
    first, second = trips.trips
    assert first.duration.ToSeconds() == pytest.approx(900 + 90 + 600, abs=60)
    assert first.distance_m == pytest.approx(900 * 12 + 1000 + 600 * 12, rel=0.05)
    assert second.distance_m == pytest.approx(1200 * 14, rel=0.05)
    summary = await api.stub.GetSummary(hpb.GetSummaryRequest(**request), metadata=api.reader)
    assert summary.trip_count == 2
    assert summary.distance_m == pytest.approx(first.distance_m + second.distance_m)


async def test_empty_range_is_an_empty_answer(api: Api) -> None:
    await api.store.record_locations([Location("d1", 1.0, 2.0, 0.0, 0.0, START_NS)])
    assert await api.trail("d1", START_NS + S, START_NS + 2 * S) == []


@pytest.mark.parametrize(
    ("since", "until", "words"),
    [
        (START_NS + S, START_NS, "until must be after since"),
        (START_NS, START_NS, "until must be after since"),
        (START_NS, START_NS + MAX_SPAN_NS + 1, "spans more than 31 days"),
        (0, START_NS, "since and until are both required"),
    ],
)
async def test_bad_ranges_are_invalid_argument(
    api: Api, since: int, until: int, words: str
) -> None:
    await api.store.record_locations([Location("d1", 1.0, 2.0, 0.0, 0.0, START_NS)])
    request = hpb.GetTripsRequest(driver_id="d1", until=ts(until))
    if since:
        request.since.CopyFrom(ts(since))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.GetTrips(request, metadata=api.reader)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.trail("d1", since or 1, until)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_driver_is_not_found(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.trail("ghost", START_NS, START_NS + S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_authorization_rules(api: Api) -> None:
    await api.store.record_locations(
        [Location(d, 1.0, 2.0, 0.0, 0.0, START_NS) for d in ("d1", "d2")]
    )
    issuer = api.issuer

    async def code(token: str | None, driver_id: str, method: str = "GetTrips") -> Any:
        metadata = () if token is None else api.auth(token)
        try:
            if method == "ForgetDriver":
                await api.stub.ForgetDriver(
                    hpb.ForgetDriverRequest(driver_id=driver_id), metadata=metadata
                )
            elif method == "GetTrail":
                call = api.stub.GetTrail(
                    hpb.GetTrailRequest(
                        driver_id=driver_id, since=ts(START_NS), until=ts(START_NS + S)
                    ),
                    metadata=metadata,
                )
                _ = [c async for c in call]
            else:
                rpc = getattr(api.stub, method)
                kind = getattr(hpb, f"{method}Request")
                await rpc(
                    kind(driver_id=driver_id, since=ts(START_NS), until=ts(START_NS + S)),
                    metadata=metadata,
                )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
    for method in ("GetTrail", "GetTrips", "GetSummary"):
        assert await code(None, "d1", method) == grpc.StatusCode.UNAUTHENTICATED
        assert await code(issuer.issue_driver("d1"), "d1", method) == ok
        assert await code(issuer.issue_driver("d1"), "d2", method) == denied
        assert await code(issuer.issue_service(["history:read"]), "d2", method) == ok
        # The live-location scope does not read history.
        assert await code(issuer.issue_service(["drivers:read"]), "d1", method) == denied
        assert await code(issuer.issue_service(["drivers:forget"]), "d1", method) == denied
    forget = "ForgetDriver"
    assert await code(issuer.issue_driver("d1"), "d1", forget) == denied
    assert await code(issuer.issue_service(["history:read", "drivers:write"]), "d1", forget) == (
        denied
    )
    assert await code(issuer.issue_service(["drivers:forget"]), "d1", forget) == ok
    assert await code(issuer.issue_service(["drivers:forget"]), "d1", forget) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_forget_erases_the_driver(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    await api.store.record_locations(day_route().fixes[:500])
    token = api.issuer.issue_service(["drivers:forget"], subject="privacy-officer")
    with caplog.at_level("WARNING"):
        answer = await api.stub.ForgetDriver(
            hpb.ForgetDriverRequest(driver_id="d1"), metadata=api.auth(token)
        )
    assert (answer.history_fixes, answer.driver_records) == (500, 1)
    line = next(r.getMessage() for r in caplog.records if "driver erased" in r.getMessage())
    assert "d1" in line
    assert "privacy-officer" in line
    assert "52." not in line  # never the data
    assert await api.store.get_driver("d1") is None
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.trail("d1", START_NS, START_NS + 10**12)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
