"""gRPC message framing that no well-behaved client sends, written byte by byte on a real
socket (grpc's client cannot be made to send it): the runtime must refuse each call at once
with the status the gRPC protocol names, and keep serving everyone else.

- A 5-byte prefix announcing a message of 4 GiB, beyond `max_receive_message_length`:
  RESOURCE_EXHAUSTED at once. grpcio 1.75.0 to 1.80.1 kept the stream open and buffered
  whatever followed, toward the announced 4 GiB, before checking the limit.
- The compressed flag set without a `grpc-encoding` header: INTERNAL ("an ill-constructed
  message with its Compressed-Flag bit set but lacking a grpc-encoding entry different from
  identity MUST fail with INTERNAL", grpc/doc/compression.md). grpcio 1.75.0 to 1.84.2
  read the bytes as uncompressed and answered OK.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.server.running import RunningServer
from tests.helpers.raw_h2 import RawH2

UPLOAD = "/driver.v1.DriverService/UploadLocations"
GET_DRIVER = "/driver.v1.DriverService/GetDriver"
#: "Refused at once": generous for a loaded 2-core CI machine, far below any call deadline.
PROMPT_S = 5.0
FOUR_GIB = 2**32 - 1  # the largest length a 5-byte prefix can announce


def request_for(path: str, driver_id: str) -> bytes:
    if path == UPLOAD:
        update = pb.LocationUpdate(driver_id=driver_id, latitude=52.5, longitude=13.4)
        return update.SerializeToString()
    return pb.GetDriverRequest(driver_id=driver_id).SerializeToString()


def frame(message: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message: flag byte, 4-byte big-endian length, message."""
    announced = len(message) if length is None else length
    return bytes([int(compressed)]) + announced.to_bytes(4, "big") + message


@pytest.fixture
async def raw(server: RunningServer) -> AsyncIterator[RawH2]:
    connection = await RawH2.connect(server.port)
    try:
        yield connection
    finally:
        connection.close()


async def answer(raw: RawH2, stream_id: int) -> tuple[int, float]:
    """Wait for the call's grpc-status (at most three times PROMPT_S), acknowledging the
    server's pings as a live client does; the status and the seconds it took. Fails if the
    server left the call hanging."""
    started = time.monotonic()
    deadline = started + 3 * PROMPT_S
    while raw.grpc_status(stream_id) is None and raw.eof_at is None:
        if time.monotonic() > deadline:
            break
        await raw.read_for(0.05)
        raw.flush()
    status = raw.grpc_status(stream_id)
    elapsed = time.monotonic() - started
    assert status is not None, f"no grpc-status after {elapsed:.1f} s: the call was left hanging"
    return status, elapsed


async def serves_normal_calls(server: RunningServer, driver_id: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        update = pb.LocationUpdate(driver_id=driver_id, latitude=1.0, longitude=2.0)
        summary = await stub.UploadLocations(iter([update]), timeout=5)
        assert summary.persisted_count == 1
        reply = await stub.GetDriver(pb.GetDriverRequest(driver_id=driver_id), timeout=5)
        assert (reply.latitude, reply.longitude) == (1.0, 2.0)


@pytest.mark.parametrize("path", [UPLOAD, GET_DRIVER], ids=["UploadLocations", "GetDriver"])
async def test_prefix_announcing_4_gib_is_refused_at_once(
    server: RunningServer, raw: RawH2, path: str
) -> None:
    stream_id = raw.start_grpc_call(path)
    # The prefix and the start of a message, then nothing more: the stream stays open.
    start = frame(request_for(path, "drv-huge"), length=FOUR_GIB)
    raw.send_data(stream_id, start, end_stream=False)
    status, elapsed = await answer(raw, stream_id)
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert elapsed <= PROMPT_S, f"refused only after {elapsed:.1f} s"
    await serves_normal_calls(server, "drv-after-huge")


@pytest.mark.parametrize("path", [UPLOAD, GET_DRIVER], ids=["UploadLocations", "GetDriver"])
async def test_compressed_flag_without_grpc_encoding_is_internal(
    server: RunningServer, raw: RawH2, stub: pb_grpc.DriverServiceStub, path: str
) -> None:
    # The driver exists, so a runtime that ignored the flag would answer GetDriver with OK.
    known = pb.LocationUpdate(driver_id="drv-flag", latitude=3.0, longitude=4.0)
    assert (await stub.UploadLocations(iter([known]), timeout=5)).persisted_count == 1
    target = "drv-flag" if path == GET_DRIVER else "drv-flag-upload"
    stream_id = raw.start_grpc_call(path)
    raw.send_data(stream_id, frame(request_for(path, target), compressed=True), end_stream=True)
    status, elapsed = await answer(raw, stream_id)
    assert status == grpc.StatusCode.INTERNAL.value[0]
    assert elapsed <= PROMPT_S, f"refused only after {elapsed:.1f} s"
    if path == UPLOAD:  # the refused update was not stored
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetDriver(pb.GetDriverRequest(driver_id=target), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await serves_normal_calls(server, "drv-after-flag")
