"""Tokens and per-driver authorization on a real mTLS socket, against the real servicer and
a real SQLite store: every way in that should fail does, with the right code, and the
store keeps nothing a refused caller sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api import DriverServicer
from driver_service.api.rules import RULES
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.interceptors import AuthPolicy, server_interceptors
from driver_service.security import (
    ServerTlsFiles,
    TokenIssuer,
    TokenValidator,
    channel_credentials,
    server_credentials,
)
from driver_service.security.devcerts import create_dev_certs

SECRET = b"integration-test-secret-of-32-bytes!!"
NOW_NS = time.time_ns()


@dataclass
class Secure:
    stub: pb_grpc.DriverServiceStub
    channel: grpc.aio.Channel
    repository: SqliteRepository
    tracking: DriverTracking
    issuer: TokenIssuer

    async def settle(self) -> None:
        """Wait until everything accepted is committed, so the store can be inspected."""
        await self.tracking.writer.flush()

    async def history(self, driver_id: str) -> list[float]:
        await self.settle()
        rows = await self.repository.location_history(driver_id, 0, 2**62, 1000)
        return [row.latitude for row in rows]


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[Secure]:
    certs = create_dev_certs(tmp_path / "certs")
    repository = await SqliteRepository.open(tmp_path / "store.sqlite3")
    tracking = DriverTracking(repository, MemoryBus())
    await tracking.start()
    policy = AuthPolicy(TokenValidator.from_secret(SECRET), RULES)
    server = grpc.aio.server(interceptors=server_interceptors(policy))
    pb_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    creds, _ = server_credentials(
        ServerTlsFiles(certs.server_cert, certs.server_key, certs.ca_cert)
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    channel = grpc.aio.secure_channel(
        f"localhost:{port}",
        channel_credentials(certs.ca_cert, certs.client_cert, certs.client_key),
    )
    try:
        yield Secure(
            pb_grpc.DriverServiceStub(channel),
            channel,
            repository,
            tracking,
            TokenIssuer.from_secret(SECRET),
        )
    finally:
        await channel.close()
        await server.stop(0)
        await tracking.close()


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def update(driver_id: str, latitude: float) -> pb.LocationUpdate:
    msg = pb.LocationUpdate(driver_id=driver_id, latitude=latitude, longitude=13.4)
    msg.timestamp.FromNanoseconds(NOW_NS + int(latitude * 1000))
    return msg


async def upload(
    secure: Secure, token: str | None, *updates: pb.LocationUpdate, pause_after: int = 0
) -> pb.UploadSummary:
    async def gen() -> AsyncIterator[pb.LocationUpdate]:
        for n, u in enumerate(updates):
            if pause_after and n == pause_after:
                await asyncio.sleep(AFTER_VERDICT_S)
            yield u

    metadata = bearer(token) if token else None
    return await secure.stub.UploadLocations(gen(), metadata=metadata, timeout=10)


async def expect_code(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


#: grpc.aio's client reports INTERNAL "Internal error from Core" instead of the server's status
#: when it is still writing a message as the server ends the call. Tests that send messages
#: after a violation pause first, so the server's verdict arrives before the next write.
AFTER_VERDICT_S = 0.3


# --- authentication ---------------------------------------------------------------------


async def test_no_token_is_unauthenticated_and_nothing_is_stored(secure: Secure) -> None:
    details = await expect_code(
        upload(secure, None, update("d1", 1.0)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert "missing" in details
    assert await secure.history("d1") == []


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: TokenIssuer.from_secret(b"x" * 40).issue_driver("d1"), "signature"),
        (lambda: TokenIssuer.from_secret(SECRET).issue_driver("d1", ttl_s=-120), "expired"),
        (
            lambda: TokenIssuer.from_secret(SECRET, audience="someone-else").issue_driver("d1"),
            "audience",
        ),
        (lambda: TokenIssuer.from_secret(SECRET, issuer="evil").issue_driver("d1"), "issuer"),
        (lambda: "not.a.jwt", "malformed"),
    ],
    ids=["bad-signature", "expired", "wrong-audience", "wrong-issuer", "malformed"],
)
async def test_invalid_token_is_unauthenticated_with_the_reason(
    secure: Secure, make_token: object, reason: str
) -> None:
    token = make_token()  # type: ignore[operator]
    details = await expect_code(
        upload(secure, token, update("d1", 1.0)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert reason in details
    assert token not in details
    assert await secure.history("d1") == []


async def test_every_rpc_kind_requires_a_token(secure: Secure) -> None:
    await expect_code(
        secure.stub.GetDriver(pb.GetDriverRequest(driver_id="d1"), timeout=5),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    watch = secure.stub.StreamLocation(pb.StreamLocationRequest(driver_id="d1"), timeout=5)
    await expect_code(watch.read(), grpc.StatusCode.UNAUTHENTICATED)
    # The server refuses before reading any message: the refusal arrives without a write.
    session = secure.stub.DriverSession(timeout=5)
    await expect_code(session.read(), grpc.StatusCode.UNAUTHENTICATED)


async def test_health_is_exempt_but_driver_service_is_not(secure: Secure) -> None:
    health = health_pb2_grpc.HealthStub(secure.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- authorization ----------------------------------------------------------------------


async def test_driver_uploads_for_itself(secure: Secure) -> None:
    token = secure.issuer.issue_driver("d1")
    summary = await upload(secure, token, update("d1", 1.0), update("d1", 2.0))
    assert (summary.received_count, summary.persisted_count) == (2, 2)
    assert await secure.history("d1") == [1.0, 2.0]


async def test_driver_token_uploading_for_another_driver_is_denied_from_that_message_on(
    secure: Secure,
) -> None:
    token = secure.issuer.issue_driver("d1")
    call = upload(
        secure, token, update("d1", 1.0), update("d2", 2.0), update("d1", 3.0), pause_after=2
    )
    await expect_code(call, grpc.StatusCode.PERMISSION_DENIED)
    # The foreign update and everything after it never reached the store.
    assert await secure.history("d2") == []
    assert 3.0 not in await secure.history("d1")
    assert await secure.repository.get_driver("d2") is None


async def test_driver_session_for_another_driver_is_denied(secure: Secure) -> None:
    token = secure.issuer.issue_driver("d1")
    session = secure.stub.DriverSession(metadata=bearer(token), timeout=10)
    await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
    pong = await session.read()
    assert pong.pong.server_ts_ms > 0
    await session.write(pb.DriverEvent(location=update("d2", 5.0)))
    await expect_code(session.read(), grpc.StatusCode.PERMISSION_DENIED)
    assert await secure.history("d2") == []
    assert await secure.repository.get_driver("d2") is None


#: Commands of 1 MB pushed at once: more than the client's flow-control window takes.
COMMANDS_IN_FLIGHT = 40


async def test_a_refused_session_message_is_answered_while_a_command_is_still_being_sent(
    secure: Secure,
) -> None:
    """The refusal comes from the session's reader while the server is still sending it a
    command (here one too large for the flow-control window, so the send waits on the
    client). Aborting from the reader then made grpc reject the status batch
    (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS): the status was never sent, and the caller waited
    for its deadline (CI saw it with a pong in flight). The caller must get the command,
    then PERMISSION_DENIED."""
    token = secure.issuer.issue_driver("d1")
    session = secure.stub.DriverSession(metadata=bearer(token), timeout=10)
    await session.write(pb.DriverEvent(location=update("d1", 1.0)))
    await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
    assert (await session.read()).pong.server_ts_ms > 0  # the session now speaks for d1
    for n in range(COMMANDS_IN_FLIGHT):
        offer = pb.RideOffer(offer_id=f"o{n}", pickup_address="x" * 1_000_000)
        assert secure.tracking.push_command("d1", pb.ServerCommand(ride_offer=offer))
    await asyncio.sleep(0.3)  # the send is under way and waits for the client to read
    await session.write(pb.DriverEvent(location=update("d2", 5.0)))
    await asyncio.sleep(0.3)  # the reader has refused it
    for n in range(COMMANDS_IN_FLIGHT):
        assert (await session.read()).ride_offer.offer_id == f"o{n}"
    await expect_code(session.read(), grpc.StatusCode.PERMISSION_DENIED)
    assert await secure.repository.get_driver("d2") is None


async def test_driver_session_status_change_for_another_driver_is_denied(secure: Secure) -> None:
    token = secure.issuer.issue_driver("d1")
    events = [
        pb.DriverEvent(status_change=pb.DriverStatusChange(driver_id="d2", new_status="BUSY")),
        pb.DriverEvent(location=update("d1", 7.0)),
    ]

    async def gen() -> AsyncIterator[pb.DriverEvent]:
        yield events[0]
        await asyncio.sleep(AFTER_VERDICT_S)
        yield events[1]

    session = secure.stub.DriverSession(gen(), metadata=bearer(token), timeout=10)
    await expect_code(session.read(), grpc.StatusCode.PERMISSION_DENIED)
    assert await secure.repository.get_driver("d2") is None
    assert await secure.history("d1") == []


async def test_read_scope_cannot_write(secure: Secure) -> None:
    token = secure.issuer.issue_service(["drivers:read"])
    details = await expect_code(
        upload(secure, token, update("d1", 1.0)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "drivers:write" in details
    assert await secure.history("d1") == []


async def test_write_scope_writes_any_driver_and_read_scope_reads(secure: Secure) -> None:
    writer = secure.issuer.issue_service(["drivers:write"])
    summary = await upload(secure, writer, update("d1", 1.0), update("d2", 2.0))
    assert summary.persisted_count == 2
    reader = secure.issuer.issue_service(["drivers:read"])
    got = await secure.stub.GetDriver(
        pb.GetDriverRequest(driver_id="d2"), metadata=bearer(reader), timeout=5
    )
    assert got.latitude == 2.0
    await expect_code(
        secure.stub.GetDriver(
            pb.GetDriverRequest(driver_id="d2"), metadata=bearer(writer), timeout=5
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_driver_reads_itself_but_not_another_driver(secure: Secure) -> None:
    await upload(
        secure, secure.issuer.issue_service(["drivers:write"]), update("d1", 1.0), update("d2", 2.0)
    )
    token = secure.issuer.issue_driver("d1")
    own = await secure.stub.GetDriver(
        pb.GetDriverRequest(driver_id="d1"), metadata=bearer(token), timeout=5
    )
    assert own.driver_id == "d1"
    await expect_code(
        secure.stub.GetDriver(
            pb.GetDriverRequest(driver_id="d2"), metadata=bearer(token), timeout=5
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    watch = secure.stub.StreamLocation(
        pb.StreamLocationRequest(driver_id="d2"), metadata=bearer(token), timeout=5
    )
    await expect_code(watch.read(), grpc.StatusCode.PERMISSION_DENIED)


# --- validation before authorization ----------------------------------------------------


async def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


@pytest.mark.parametrize("bad_id", ["", "has space", "-dash", "x" * 129])
async def test_a_malformed_id_is_invalid_argument_whatever_the_token(
    secure: Secure, bad_id: str
) -> None:
    """A malformed id names no driver: a driver token gets the same INVALID_ARGUMENT, with
    the same message, as a service token, never PERMISSION_DENIED."""
    tokens = [secure.issuer.issue_driver("d1"), secure.issuer.issue_service(["drivers:read"])]
    answers = []
    for token in tokens:
        got = await refusal(
            secure.stub.GetDriver(
                pb.GetDriverRequest(driver_id=bad_id), metadata=bearer(token), timeout=5
            )
        )
        watch = secure.stub.StreamLocation(
            pb.StreamLocationRequest(driver_id=bad_id), metadata=bearer(token), timeout=5
        )
        answers.append((got, await refusal(watch.read())))
    driver_answer, service_answer = answers
    assert driver_answer == service_answer
    for code, details in driver_answer:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("driver_id ")


async def test_a_malformed_id_in_a_driver_tokens_stream_is_handled_as_for_any_token(
    secure: Secure,
) -> None:
    """Upload: the malformed update is counted and dropped, as for a service token; session:
    a location with one is dropped and the session goes on, a status change with one ends it
    with the handler's INVALID_ARGUMENT."""
    driver = secure.issuer.issue_driver("d1")
    writer = secure.issuer.issue_service(["drivers:write"])
    for token in (driver, writer):
        summary = await upload(secure, token, update("d1", 1.0), update("", 2.0))
        assert (summary.received_count, summary.persisted_count) == (2, 1)

    answers = []
    for token in (driver, writer):
        session = secure.stub.DriverSession(metadata=bearer(token), timeout=10)
        await session.write(pb.DriverEvent(location=update("", 3.0)))
        await session.write(pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1)))
        assert (await session.read()).WhichOneof("command") == "pong"
        await session.write(
            pb.DriverEvent(status_change=pb.DriverStatusChange(driver_id="", new_status="BUSY"))
        )
        answers.append(await refusal(session.read()))
    assert answers[0] == answers[1] == (grpc.StatusCode.INVALID_ARGUMENT, "driver_id is required")
    assert await secure.history("d1") == [1.0]
