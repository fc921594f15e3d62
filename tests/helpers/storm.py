"""Storms for the fault-injection tier: real grpc.aio clients that cancel, run into deadlines
and hang up at every step of every RPC kind, many at once, against a server subprocess.

A storm only asserts that nothing in it hangs (each is bounded by STORM_LIMIT_S): what a
cancelled call ends with is the client's business. What the server must get right afterwards
is checked by `tests.helpers.chaos_server.ChaosServer.assert_unharmed`. Updates a storm saw
acknowledged (a summary whose persisted_count covers them) are recorded in a `Ledger`, so the
check can find every one of them in the store's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from driver_service._gen.driver.v1 import batch_pb2 as bpb
from driver_service._gen.driver.v1 import batch_pb2_grpc as bpb_grpc
from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.wire import ns_to_timestamp
from tests.helpers.raw_h2 import RawH2

NANOS = 1_000_000_000
#: Fixes are stamped from ten minutes ago on, a microsecond apart: valid, and never repeated.
BASE_NS = (time.time_ns() // NANOS - 600) * NANOS
#: Every driver of the storms: a bounded set, so the store's current state does not grow
#: from storm to storm (RSS is compared with a baseline) and the rate limit is never reached.
DRIVER_POOL = 64
#: No storm may take longer: a hang fails here, with the storm's name, not at the test timeout.
STORM_LIMIT_S = 20.0
#: The client's own deadline on calls the storm does not cut short on purpose.
CALL_DEADLINE_S = 5.0
#: Offers of the storms live this long, so none is left queued when the leak check runs.
OFFER_TTL_S = 1


def jitter(n: int, step_s: float = 0.0005, spread: int = 7) -> float:
    """A small delay that differs from call to call, so cancels land at different points."""
    return (n % spread) * step_s


@dataclass
class Ledger:
    """Every update the server acknowledged as durably stored, by (driver id, timestamp)."""

    acked: set[tuple[str, int]] = field(default_factory=set)
    _sequence: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fixes(self, n: int, count: int, prefix: str = "chaos") -> list[pb.LocationUpdate]:
        """`count` fresh, valid fixes of pool driver `n`."""
        driver_id = f"{prefix}-{n % DRIVER_POOL}"
        return [
            pb.LocationUpdate(
                driver_id=driver_id,
                latitude=52.0 + (seq % 1000) * 1e-5,
                longitude=13.0,
                speed_mps=4.0,
                heading_degrees=90.0,
                timestamp=ns_to_timestamp(BASE_NS + seq * 1000),
            )
            for seq in itertools.islice(self._sequence, count)
        ]

    def acknowledge(self, fixes: list[pb.LocationUpdate], persisted_count: int) -> None:
        """Record `fixes` if the summary said all of them are stored (a partial count cannot
        say which ones; the storms send only valid fixes, so it never happens)."""
        assert persisted_count == len(fixes), f"{persisted_count} of {len(fixes)} persisted"
        self.acked.update((f.driver_id, f.timestamp.ToNanoseconds()) for f in fixes)


@dataclass
class Clients:
    """Stubs of every service on one channel."""

    channel: grpc.aio.Channel
    driver: pb_grpc.DriverServiceStub
    dispatch: dpb_grpc.DispatchServiceStub
    batch: bpb_grpc.DriverBatchServiceStub

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Clients:
        return cls(
            channel,
            pb_grpc.DriverServiceStub(channel),
            dpb_grpc.DispatchServiceStub(channel),
            bpb_grpc.DriverBatchServiceStub(channel),
        )


async def ended(call: grpc.aio.Call) -> None:
    """Wait for a call the client cancelled, let expire or abandoned: any ending will do."""
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await call.code()


async def drain(call: Any) -> None:
    """Read a server stream to its end (whatever the end is)."""
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        while await call.read() is not grpc.aio.EOF:
            pass


async def run_storm(
    name: str, rounds: int, width: int, one: Callable[[int], Awaitable[None]]
) -> None:
    """`rounds` waves of `width` concurrent calls of `one(n)`; fail if the storm hangs."""

    async def waves() -> None:
        for r in range(rounds):
            await asyncio.gather(*(one(r * width + n) for n in range(width)))

    task = asyncio.ensure_future(waves())
    done, _ = await asyncio.wait({task}, timeout=STORM_LIMIT_S)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError(f"{name} storm still running after {STORM_LIMIT_S} s")
    task.result()


# --- UploadLocations and UploadLocationBatches ------------------------------------------------


async def upload(c: Clients, ledger: Ledger, n: int) -> None:
    """One upload that ends at step n % 7: cancelled before its first message, mid-stream,
    after half-close while its commit is pending, at a deadline; a batch upload cancelled
    after half-close; or one of two normal uploads, whose acknowledgement is recorded."""
    fixes = ledger.fixes(n, 40)
    step = n % 7
    if step == 0:  # cancel before the first message
        call = c.driver.UploadLocations(timeout=CALL_DEADLINE_S)
        await asyncio.sleep(jitter(n, 0.0002))
        call.cancel()
    elif step == 1:  # cancel mid-stream
        call = c.driver.UploadLocations(timeout=CALL_DEADLINE_S)
        for fix in fixes[: n % 20 + 1]:
            await call.write(fix)
        call.cancel()
    elif step == 2:  # half-closed: the server waits for the commit when the cancel comes
        call = c.driver.UploadLocations(timeout=CALL_DEADLINE_S)
        for fix in fixes:
            await call.write(fix)
        await call.done_writing()
        await asyncio.sleep(jitter(n, 0.0003))
        call.cancel()
    elif step == 3:  # a deadline anywhere from mid-stream to the commit
        call = c.driver.UploadLocations(iter(fixes), timeout=0.001 * (n % 9 + 1))
    elif step == 4:  # the batch service's upload, half-closed, then cancelled
        batch = c.batch.UploadLocationBatches(timeout=CALL_DEADLINE_S)
        await batch.write(bpb.LocationBatch(updates=fixes))
        await batch.done_writing()
        await asyncio.sleep(jitter(n, 0.0003))
        batch.cancel()
        await ended(batch)
        return
    else:
        summary = await c.driver.UploadLocations(iter(fixes), timeout=CALL_DEADLINE_S)
        ledger.acknowledge(fixes, summary.persisted_count)
        return
    await ended(call)


# --- GetDriver and StreamLocation ------------------------------------------------------------


async def get_driver(c: Clients, ledger: Ledger, n: int) -> None:
    """A GetDriver cancelled at once, with a deadline of a millisecond, or answered."""
    request = pb.GetDriverRequest(driver_id=f"chaos-{n % DRIVER_POOL}")
    step = n % 3
    if step == 0:
        call = c.driver.GetDriver(request, timeout=CALL_DEADLINE_S)
        await asyncio.sleep(jitter(n, 0.0001))
        call.cancel()
        await ended(call)
    else:
        await ended(c.driver.GetDriver(request, timeout=0.001 if step == 1 else CALL_DEADLINE_S))


async def watch(c: Clients, ledger: Ledger, n: int) -> None:
    """A StreamLocation cancelled before its first message, after it, by a deadline while it
    waits, or on a driver that never reports (waited for), while uploads keep it busy."""
    step = n % 4
    driver_id = f"chaos-{n % DRIVER_POOL}" if step != 3 else f"never-{n % DRIVER_POOL}"
    timeout = 0.02 + jitter(n, 0.005) if step == 2 else CALL_DEADLINE_S
    call = c.driver.StreamLocation(pb.StreamLocationRequest(driver_id=driver_id), timeout=timeout)
    if step == 1:
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            await asyncio.wait_for(call.read(), 1.0)
    elif step != 2:
        await asyncio.sleep(jitter(n, 0.001))
    call.cancel()
    await drain(call)


async def watch_while_uploading(c: Clients, ledger: Ledger, n: int) -> None:
    """Watchers come and go while the drivers they watch keep moving."""
    if n % 3 == 0:
        await upload(c, ledger, 5)  # a normal upload (step 5), acknowledged
    else:
        await watch(c, ledger, n)


# --- DriverSession, SendCommand, GetCommandStatus, AnswerOffer -------------------------------


def location_event(ledger: Ledger, n: int, prefix: str) -> pb.DriverEvent:
    return pb.DriverEvent(location=ledger.fixes(n, 1, prefix)[0])


HEARTBEAT = pb.DriverEvent(heartbeat=pb.HeartbeatPing(client_ts_ms=1))


async def bound_session(c: Clients, ledger: Ledger, n: int, prefix: str) -> Any:
    """A DriverSession that speaks for driver `prefix-n`: a location, then a heartbeat whose
    pong says the location was handled (events are handled in order)."""
    call = c.driver.DriverSession(timeout=CALL_DEADLINE_S)
    await call.write(location_event(ledger, n, prefix))
    await call.write(HEARTBEAT)
    while (reply := await call.read()) is not grpc.aio.EOF and not reply.HasField("pong"):
        pass
    return call


async def session(c: Clients, ledger: Ledger, n: int) -> None:
    """A DriverSession ended at step n % 5: before its first event, after a location, after a
    heartbeat's pong and half-close, by a deadline while idle, or by a status change."""
    step = n % 5
    call = c.driver.DriverSession(timeout=0.03 if step == 3 else CALL_DEADLINE_S)
    with contextlib.suppress(grpc.aio.AioRpcError):
        if step == 1:
            await call.write(location_event(ledger, n, "chaos"))
        elif step == 2:
            await call.write(HEARTBEAT)
            await call.read()
            await call.done_writing()
        elif step == 3:
            await call.write(HEARTBEAT)
            await drain(call)
        elif step == 4:
            await call.write(
                pb.DriverEvent(
                    status_change=pb.DriverStatusChange(
                        driver_id=f"chaos-{n % DRIVER_POOL}", new_status="AVAILABLE"
                    )
                )
            )
    await asyncio.sleep(jitter(n))
    call.cancel()
    await ended(call)


def ride_offer(driver_id: str) -> dpb.SendCommandRequest:
    request = dpb.SendCommandRequest(
        driver_id=driver_id,
        command=pb.ServerCommand(ride_offer=pb.RideOffer(pickup_address="Alexanderplatz 1")),
    )
    request.ttl.seconds = OFFER_TTL_S
    return request


async def offer(c: Clients, ledger: Ledger, n: int) -> None:
    """A ride offer pushed into a live session, with someone hanging up at step n % 5: the
    session while SendCommand pushes; the SendCommand call itself; a GetCommandStatus waiting
    for the outcome, by cancel or deadline; or the session after it read the offer. The
    driver answers some of them, so the waits also end normally."""
    driver_id = f"offer-{n % DRIVER_POOL}"
    step = n % 5
    try:
        sess = await bound_session(c, ledger, n, "offer")
    except grpc.aio.AioRpcError:
        return
    send = c.dispatch.SendCommand(ride_offer(driver_id), timeout=CALL_DEADLINE_S)
    if step == 0:  # the driver's app hangs up while the offer is being pushed to it
        await asyncio.sleep(jitter(n, 0.0003))
        sess.cancel()
        await ended(send)
        await ended(sess)
        return
    if step == 1:  # the dispatcher hangs up while its offer is being pushed
        await asyncio.sleep(jitter(n, 0.0002))
        send.cancel()
        await ended(send)
        sess.cancel()
        await ended(sess)
        return
    try:
        sent = await send
    except grpc.aio.AioRpcError:
        sess.cancel()
        await ended(sess)
        return
    status = dpb.GetCommandStatusRequest(command_id=sent.command_id, wait_for_outcome=True)
    if step == 2:  # a waiter cancelled while it waits for the outcome; the driver accepts
        waiter = c.dispatch.GetCommandStatus(status, timeout=CALL_DEADLINE_S)
        await asyncio.sleep(jitter(n, 0.001))
        waiter.cancel()
        await ended(waiter)
        await ended(
            c.dispatch.AnswerOffer(
                dpb.AnswerOfferRequest(
                    offer_id=sent.command_id, driver_id=driver_id, accepted=True
                ),
                timeout=CALL_DEADLINE_S,
            )
        )
    elif step == 3:  # a waiter whose deadline passes while it waits
        await ended(c.dispatch.GetCommandStatus(status, timeout=0.01 + jitter(n, 0.005)))
    else:  # the session reads the offer and hangs up without answering; a waiter sees it end
        waiter = c.dispatch.GetCommandStatus(status, timeout=CALL_DEADLINE_S)
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            await asyncio.wait_for(sess.read(), 1.0)
        sess.cancel()
        await asyncio.sleep(jitter(n, 0.001))
        waiter.cancel()
        await ended(waiter)
    sess.cancel()
    await ended(sess)


# --- channels closed with calls in flight, and raw sockets -----------------------------------


async def close_channel_midway(target: str, ledger: Ledger, n: int) -> None:
    """A channel with one call of every kind in flight, closed abruptly (no cancels sent by
    the application: the connection just goes)."""
    channel = grpc.aio.insecure_channel(target)
    c = Clients.on(channel)
    fixes = ledger.fixes(n, 30)
    upload_call = c.driver.UploadLocations(timeout=CALL_DEADLINE_S)
    calls: list[Any] = [
        upload_call,
        c.driver.StreamLocation(
            pb.StreamLocationRequest(driver_id=f"chaos-{n % DRIVER_POOL}"), timeout=CALL_DEADLINE_S
        ),
        c.driver.DriverSession(timeout=CALL_DEADLINE_S),
        c.driver.GetDriver(pb.GetDriverRequest(driver_id=f"chaos-{n % DRIVER_POOL}")),
        c.dispatch.GetCommandStatus(
            dpb.GetCommandStatusRequest(command_id="no-such-command", wait_for_outcome=True),
            timeout=CALL_DEADLINE_S,
        ),
    ]
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        for fix in fixes[: n % 30 + 1]:
            await upload_call.write(fix)
        if n % 2:
            await upload_call.done_writing()
    await asyncio.sleep(jitter(n, 0.001))
    await channel.close()
    for call in calls:
        await ended(call)


#: What a raw client sends before it closes the socket, each a different half of a handshake.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RAW_OPENINGS: tuple[bytes, ...] = (
    b"",  # connect, then close
    PREFACE[:7],  # half the connection preface
    PREFACE,  # the preface without SETTINGS
    PREFACE + b"\x00\x00\x06\x04\x00\x00\x00\x00",  # a SETTINGS frame header without payload
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # HTTP/1.1 that never finishes its head
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # the start of a TLS ClientHello
)


async def raw_socket(port: int, n: int) -> None:
    """A socket that sends part of a handshake and closes (every other one with an RST,
    through SO_LINGER 0); one in every len(RAW_OPENINGS) + 1 opens a gRPC upload on a
    complete HTTP/2 connection and sends half a gRPC message before it goes."""
    kind = n % (len(RAW_OPENINGS) + 1)
    if kind == len(RAW_OPENINGS):
        raw = await RawH2.connect(port)
        stream_id = raw.start_grpc_call("/driver.v1.DriverService/UploadLocations")
        # A message prefix announcing 100 bytes, and 10 of them.
        raw.send_data(stream_id, b"\x00\x00\x00\x00\x64" + b"\x0a" * 10, end_stream=False)
        await raw.writer.drain()
        raw.close()
        with contextlib.suppress(ConnectionError):
            await raw.writer.wait_closed()
        return
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(RAW_OPENINGS[kind])
        await writer.drain()
        await asyncio.sleep(jitter(n, 0.001))
        if n % 2:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
