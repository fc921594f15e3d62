"""The call pipeline's recovery on a real grpc.aio server: a bug in any kind of handler reaches the
caller as INTERNAL "internal server error" with no internals, and deliberate aborts keep
their status code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from driver_service.interceptors import server_interceptors

SECRET = "secret detail"
SERVICE = "test.Recovery"


def _fail() -> None:
    raise RuntimeError(SECRET)


async def unary_unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    _fail()
    return request


async def stream_unary(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> bytes:
    async for _ in requests:
        _fail()
    return b""


async def unary_stream(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    yield b"first"
    _fail()


async def stream_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request
        _fail()


async def unary_stream_writer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """A streaming handler written as a coroutine that calls context.write()."""
    await context.write(b"first")
    _fail()


async def abort_unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b""


async def abort_stream(
    request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    yield b"first"
    await context.abort(grpc.StatusCode.NOT_FOUND, "gone away")


async def ok_unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b"echo:" + request


HANDLERS = {
    "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
    "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    "UnaryStreamWriter": grpc.unary_stream_rpc_method_handler(unary_stream_writer),
    "AbortUnary": grpc.unary_unary_rpc_method_handler(abort_unary),
    "AbortStream": grpc.unary_stream_rpc_method_handler(abort_stream),
    "Ok": grpc.unary_unary_rpc_method_handler(ok_unary),
}


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=server_interceptors(None, access_log="off"))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(0)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def assert_hidden_internal(err: grpc.aio.AioRpcError) -> None:
    details = err.details() or ""
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), details)
    assert details == "internal server error"
    assert SECRET not in details
    assert "Traceback" not in details
    assert SECRET not in str(err.trailing_metadata())


async def drain(call: Any) -> tuple[list[bytes], grpc.aio.AioRpcError]:
    """Read a streaming call to its end; return what arrived and the error that ended it."""
    received: list[bytes] = []
    while True:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as err:
            return received, err
        if message is grpc.aio.EOF:
            pytest.fail(f"stream ended cleanly after {received!r}; expected an error")
        received.append(message)


def requests() -> Iterator[bytes]:
    yield b"one"
    yield b"two"


async def test_unary_unary_error_becomes_internal(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(method("UnaryUnary"))(b"x", timeout=5)
    assert_hidden_internal(info.value)


async def test_stream_unary_error_becomes_internal(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.stream_unary(method("StreamUnary"))(requests(), timeout=5)
    assert_hidden_internal(info.value)


@pytest.mark.parametrize("name", ["UnaryStream", "UnaryStreamWriter"])
async def test_unary_stream_error_after_a_message_becomes_internal(
    channel: grpc.aio.Channel, name: str
) -> None:
    call = channel.unary_stream(method(name))(b"x", timeout=5)
    received, err = await drain(call)
    assert received == [b"first"]
    assert_hidden_internal(err)


async def test_stream_stream_error_becomes_internal(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream(method("StreamStream"))(requests(), timeout=5)
    received, err = await drain(call)
    assert received == [b"one"]
    assert_hidden_internal(err)


async def test_unary_abort_keeps_its_code(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(method("AbortUnary"))(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing"


async def test_streaming_abort_keeps_its_code(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(method("AbortStream"))(b"x", timeout=5)
    received, err = await drain(call)
    assert received == [b"first"]
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "gone away"


async def test_server_keeps_serving_after_handler_errors(channel: grpc.aio.Channel) -> None:
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(method("UnaryUnary"))(b"x", timeout=5)
    assert await channel.unary_unary(method("Ok"))(b"hi", timeout=5) == b"echo:hi"
