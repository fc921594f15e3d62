"""Hostile and random input over a real socket: random messages (Hypothesis), random bytes,
and wrong protocols on the port. Never INTERNAL or UNKNOWN, never an invalid value stored,
and the server keeps serving everyone else."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.domain import InvalidInput, validate_location
from driver_service.server.running import RunningServer
from driver_service.wire import timestamp_to_ns

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 90.0, -90.0, 180.0, -180.0, 360.0, 1e308, -1e-308]),
)
driver_ids = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True),
    st.sampled_from(["", "drv-1", "x" * 129, "a\nb", "é", "../../etc"]),
)
now_s = int(time.time())
timestamps = st.one_of(
    st.none(),
    st.tuples(
        st.one_of(st.integers(-(2**40), 2**40), st.integers(now_s - 10**6, now_s + 10**4)),
        st.integers(0, 999_999_999),
    ),
)


@st.composite
def location_updates(draw: st.DrawFn) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(
        driver_id=draw(driver_ids),
        latitude=draw(floats),
        longitude=draw(floats),
        speed_mps=draw(st.floats(width=32, allow_nan=True)),
        heading_degrees=draw(st.floats(width=32, allow_nan=True)),
    )
    ts = draw(timestamps)
    if ts is not None:
        msg.timestamp.seconds, msg.timestamp.nanos = ts
    return msg


def events() -> st.SearchStrategy[pb.DriverEvent]:
    return st.one_of(
        st.just(pb.DriverEvent()),
        location_updates().map(lambda u: pb.DriverEvent(location=u)),
        st.builds(
            lambda d, s: pb.DriverEvent(
                status_change=pb.DriverStatusChange(driver_id=d, new_status=s)
            ),
            driver_ids,
            st.one_of(st.sampled_from(["AVAILABLE", "BUSY", "OFFLINE"]), st.text(max_size=40)),
        ),
        st.integers(-(2**63), 2**63 - 1).map(
            lambda t: pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=t))
        ),
    )


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        details = error.details() or ""  # type: ignore[attr-defined]
        assert "Traceback" not in details
        assert "Exception" not in details
        return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def fuzz_api(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DriverServiceStub(channel)

        @FUZZ
        @given(st.lists(location_updates(), max_size=20))
        def uploads(batch: list[pb.LocationUpdate]) -> None:
            assert code_of(lambda: stub.UploadLocations(iter(batch), timeout=10)) in ALLOWED

        @FUZZ
        @given(driver_ids)
        def lookups(driver_id: str) -> None:
            request = pb.GetDriverRequest(driver_id=driver_id)
            assert code_of(lambda: stub.GetDriver(request, timeout=5)) in ALLOWED

        @FUZZ
        @given(st.lists(events(), max_size=10))
        def sessions(batch: list[pb.DriverEvent]) -> None:
            assert code_of(lambda: list(stub.DriverSession(iter(batch), timeout=10))) in ALLOWED

        @FUZZ
        @given(st.binary(max_size=300))
        def raw_bytes(body: bytes) -> None:
            raw = channel.unary_unary("/driver.v1.DriverService/GetDriver")
            assert code_of(lambda: raw(body, timeout=5)) in ALLOWED

        uploads()
        lookups()
        sessions()
        raw_bytes()


async def test_random_messages_never_crash_or_store_invalid_values(server: RunningServer) -> None:
    await asyncio.to_thread(fuzz_api, f"127.0.0.1:{server.port}")
    repository = server.tracking.repository
    drivers = getattr(repository, "inner", repository)._drivers  # every current state
    far_future_ns = time.time_ns() + 10**15
    for driver in drivers.values():
        loc = driver.location
        if loc is None:
            continue
        try:
            validate_location(loc.driver_id, loc.latitude, loc.longitude, loc.speed_mps,
                              loc.heading_degrees, loc.recorded_at_ns, far_future_ns)  # fmt: skip
        except InvalidInput as exc:  # pragma: no cover - the failure message says what
            raise AssertionError(f"stored an invalid location {loc}: {exc}") from exc


def _send_raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        try:
            return sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return b""


def _tls_hello(port: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            context.wrap_socket(sock, server_hostname="localhost")
        except (ssl.SSLError, ConnectionResetError, OSError):
            return
    raise AssertionError("a plaintext gRPC port completed a TLS handshake")


async def test_wrong_protocols_are_dropped_and_everyone_else_is_served(
    server: RunningServer,
) -> None:
    port = server.port
    await asyncio.to_thread(_send_raw, port, b"\x00\xff" * 512)
    await asyncio.to_thread(_send_raw, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.to_thread(_tls_hello, port)
    await asyncio.to_thread(_send_raw, port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        update = pb.LocationUpdate(driver_id="still-1", latitude=1.0, longitude=2.0)
        summary = await stub.UploadLocations(iter([update]), timeout=5)
        assert summary.persisted_count == 1
        reply = await stub.GetDriver(pb.GetDriverRequest(driver_id="still-1"), timeout=5)
        assert timestamp_to_ns(reply.last_seen_at) > 0
