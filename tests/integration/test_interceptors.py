"""The interceptor chain on a real server: request ids echoed, one structured log record per
call with its code and message counts, for unary and every kind of stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api import DriverServicer
from driver_service.api.rules import RULES
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.domain import Location
from driver_service.interceptors import AuthPolicy, call_pipeline, server_interceptors
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.security import TokenIssuer, TokenValidator

SECRET = b"interceptor-test-secret-32-bytes-long"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def calls(self, method: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "method", None) == method]

    async def settled_calls(self, method: str, count: int = 1) -> list[logging.LogRecord]:
        """The call records once `count` are in: an aborted call's status reaches the client
        before the server-side handler (and its log line) has finished unwinding."""
        for _ in range(200):
            if len(found := self.calls(method)) >= count:
                return found
            await asyncio.sleep(0.005)
        return self.calls(method)


@dataclass
class Env:
    stub: pb_grpc.DriverServiceStub
    records: Records
    token: str
    metrics: ServiceMetrics
    target: str

    def handled(self, method: str, code: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "grpc_server_handled_total",
            {
                "grpc_service": "driver.v1.DriverService",
                "grpc_method": method,
                "grpc_type": "unary",
                "grpc_code": code,
            },
        )
        return value or 0.0


@pytest.fixture(params=["all"])
async def env(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    logger = logging.getLogger(f"test.rpc.{tmp_path.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    records = Records()
    logger.addHandler(records)
    repository = await SqliteRepository.open(tmp_path / "store.sqlite3")
    tracking = DriverTracking(repository, MemoryBus())
    await tracking.start()
    policy = AuthPolicy(TokenValidator.from_secret(SECRET), RULES)
    metrics = ServiceMetrics()
    chain = server_interceptors(policy, logger, access_log=request.param, metrics=metrics)
    server = grpc.aio.server(interceptors=chain)
    pb_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    token = TokenIssuer.from_secret(SECRET).issue_service(["drivers:read", "drivers:write"])
    try:
        yield Env(pb_grpc.DriverServiceStub(channel), records, token, metrics, f"127.0.0.1:{port}")
    finally:
        await channel.close()
        await server.stop(0)
        await tracking.close()
        logger.removeHandler(records)


def meta(env: Env, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    pairs = [("authorization", f"Bearer {env.token}")]
    if request_id:
        pairs.append(("x-request-id", request_id))
    return tuple(pairs)


def update(driver_id: str, latitude: float) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(driver_id=driver_id, latitude=latitude, longitude=1.0)
    msg.timestamp.FromNanoseconds(time.time_ns())
    return msg


async def test_request_id_is_echoed_and_logged(env: Env) -> None:
    call = env.stub.UploadLocations(iter([update("d1", 1.0)]), metadata=meta(env, "abc-123"))
    await call
    # Unary responses (UploadLocations returns one message) carry it in the trailers.
    assert ("x-request-id", "abc-123") in tuple(await call.trailing_metadata())
    [record] = await env.records.settled_calls("/driver.v1.DriverService/UploadLocations")
    assert record.request_id == "abc-123"  # type: ignore[attr-defined]


async def test_an_unsafe_request_id_is_replaced_and_the_replacement_returned(env: Env) -> None:
    call = env.stub.GetDriver(
        pb.GetDriverRequest(driver_id="nobody"), metadata=meta(env, "bad id <x>")
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    # A failed unary call returns the id in its trailers (headers would stop client retries).
    [sent] = [v for k, v in await call.trailing_metadata() if k == "x-request-id"]
    assert sent != "bad id <x>"
    assert len(sent) == 32
    [record] = await env.records.settled_calls("/driver.v1.DriverService/GetDriver")
    assert record.request_id == sent  # type: ignore[attr-defined]
    assert record.code == "NOT_FOUND"  # type: ignore[attr-defined]


async def test_without_a_request_id_one_is_logged_and_none_returned(env: Env) -> None:
    """A caller that sends no id gets no trailer (it costs grpc a few per cent of a call);
    the call's log line still has a generated one."""
    call = env.stub.GetDriver(pb.GetDriverRequest(driver_id="nobody"), metadata=meta(env))
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert [k for k, _ in await call.trailing_metadata() if k == "x-request-id"] == []
    await env.stub.UploadLocations(iter([update("d1", 1.0)]), metadata=meta(env))
    stream = env.stub.StreamLocation(pb.StreamLocationRequest(driver_id="d1"), metadata=meta(env))
    await stream.read()  # the latest location, sent at once with the headers
    assert [k for k, _ in await stream.initial_metadata() or () if k == "x-request-id"] == []
    stream.cancel()
    [record] = await env.records.settled_calls("/driver.v1.DriverService/GetDriver")
    assert len(record.request_id) == 32  # type: ignore[attr-defined]
    int(record.request_id, 16)  # type: ignore[attr-defined]


async def test_unary_record_has_every_field_and_no_token(env: Env) -> None:
    await env.stub.UploadLocations(iter([update("d1", 1.0)]), metadata=meta(env))
    await env.stub.GetDriver(pb.GetDriverRequest(driver_id="d1"), metadata=meta(env))
    [record] = env.records.calls("/driver.v1.DriverService/GetDriver")
    fields = vars(record)
    assert set(fields) >= {"method", "peer", "duration_ms", "code", "request_id"}
    assert fields["code"] == "OK"
    assert fields["duration_ms"] >= 0
    assert "127.0.0.1" in fields["peer"]
    for r in env.records.records:
        assert env.token not in r.getMessage()
        assert env.token not in str(r.__dict__)


async def test_stream_records_count_messages_in_and_out(env: Env) -> None:
    summary = await env.stub.UploadLocations(
        iter([update("d1", 1.0), update("d1", 2.0), update("d1", 3.0)]), metadata=meta(env)
    )
    assert summary.received_count == 3
    [upload] = env.records.calls("/driver.v1.DriverService/UploadLocations")
    assert (upload.messages_in, upload.messages_out, upload.code) == (3, 1, "OK")  # type: ignore[attr-defined]

    events = [pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=i)) for i in range(4)]
    session = env.stub.DriverSession(iter(events), metadata=meta(env))
    pongs = [reply async for reply in session]
    assert len(pongs) == 4
    [bidi] = env.records.calls("/driver.v1.DriverService/DriverSession")
    assert (bidi.messages_in, bidi.messages_out, bidi.code) == (4, 4, "OK")  # type: ignore[attr-defined]

    watch = env.stub.StreamLocation(pb.StreamLocationRequest(driver_id="d1"), metadata=meta(env))
    first = await watch.read()
    assert first.latitude == 3.0
    watch.cancel()
    for _ in range(100):
        if env.records.calls("/driver.v1.DriverService/StreamLocation"):
            break
        await asyncio.sleep(0.02)
    [server_stream] = env.records.calls("/driver.v1.DriverService/StreamLocation")
    assert server_stream.messages_out == 1  # type: ignore[attr-defined]
    assert server_stream.code == "CANCELLED"  # type: ignore[attr-defined]


async def test_refused_calls_are_logged_with_their_code(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.GetDriver(
            pb.GetDriverRequest(driver_id="d1"), metadata=(("authorization", "Bearer nope"),)
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [record] = await env.records.settled_calls("/driver.v1.DriverService/GetDriver")
    assert record.code == "UNAUTHENTICATED"  # type: ignore[attr-defined]
    assert "nope" not in str(record.__dict__)
    # Refusals are counted too (an alert on a wave of bad tokens needs them).
    assert env.handled("GetDriver", "Unauthenticated") == 1
    assert env.handled("GetDriver", "OK") == 0


async def test_undecodable_request_is_invalid_argument_logged_and_counted(env: Env) -> None:
    channel = grpc.aio.insecure_channel(env.target)
    try:
        raw = channel.unary_unary("/driver.v1.DriverService/GetDriver")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xff\xff", metadata=meta(env, "undecodable-1"))
    finally:
        await channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (info.value.details() or "")
    [record] = await env.records.settled_calls("/driver.v1.DriverService/GetDriver")
    assert (record.code, record.request_id) == ("INVALID_ARGUMENT", "undecodable-1")  # type: ignore[attr-defined]
    assert env.handled("GetDriver", "InvalidArgument") == 1


async def test_streams_return_the_request_id_in_their_headers(env: Env) -> None:
    call = env.stub.StreamLocation(
        pb.StreamLocationRequest(driver_id="d1"), metadata=meta(env, "stream-7")
    )
    assert ("x-request-id", "stream-7") in tuple(await call.initial_metadata())
    call.cancel()


@pytest.mark.parametrize("env", ["errors"], indirect=True)
async def test_access_log_errors_keeps_only_calls_that_failed(env: Env) -> None:
    await env.stub.UploadLocations(iter([update("d1", 1.0)]), metadata=meta(env))
    await env.stub.GetDriver(pb.GetDriverRequest(driver_id="d1"), metadata=meta(env))
    with pytest.raises(grpc.aio.AioRpcError):
        await env.stub.GetDriver(pb.GetDriverRequest(driver_id="nobody"), metadata=meta(env))
    [record] = await env.records.settled_calls("/driver.v1.DriverService/GetDriver")
    assert record.code == "NOT_FOUND"  # type: ignore[attr-defined]
    assert env.records.calls("/driver.v1.DriverService/UploadLocations") == []


@pytest.mark.parametrize("registration", ["around", "interceptors"])
async def test_concurrent_calls_each_see_only_their_own_headers(
    tmp_path: Path, registration: str
) -> None:
    """The pipeline reuses the metadata grpc.aio decoded to find the handler: under many
    interleaved calls, each call's request id and token must still be its own."""
    repository = await SqliteRepository.open(tmp_path / "store.sqlite3")
    tracking = DriverTracking(repository, MemoryBus())
    await tracking.start()
    drivers = [f"drv-{n}" for n in range(40)]
    await repository.record_locations(
        [Location(d, 52.5, 13.4, 1.0, 0.0, time.time_ns() - 1_000_000_000) for d in drivers]
    )
    pipeline = call_pipeline(
        AuthPolicy(TokenValidator.from_secret(SECRET), RULES), access_log="off"
    )
    if registration == "around":
        server = grpc.aio.server()
        pb_grpc.add_DriverServiceServicer_to_server(
            DriverServicer(tracking), pipeline.around(server)
        )
    else:
        server = grpc.aio.server(interceptors=[pipeline])
        pb_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    issuer = TokenIssuer.from_secret(SECRET)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DriverServiceStub(channel)

            async def own_then_foreign(n: int) -> None:
                me, other = drivers[n], drivers[(n + 1) % len(drivers)]
                headers = (
                    ("authorization", f"Bearer {issuer.issue_driver(me)}"),
                    ("x-request-id", f"req-{n}"),
                )
                call = stub.GetDriver(pb.GetDriverRequest(driver_id=me), metadata=headers)
                assert (await call).driver_id == me
                assert ("x-request-id", f"req-{n}") in tuple(await call.trailing_metadata())
                denied = stub.GetDriver(pb.GetDriverRequest(driver_id=other), metadata=headers)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await denied
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert ("x-request-id", f"req-{n}") in tuple(await denied.trailing_metadata())

            await asyncio.gather(*(own_then_foreign(n) for n in range(len(drivers))))
    finally:
        await server.stop(0)
        await tracking.close()
