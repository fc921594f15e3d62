"""Rebuild an RpcMethodHandler with its behaviour wrapped, for any of the four RPC kinds.

grpc.aio interceptors only see the handler; to act around the call (and around each
message of a stream) an interceptor must replace the behaviour function and keep the
(de)serializers.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

#: A unary-response behaviour: (request or request iterator, context) -> awaitable response.
UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
#: A streaming-response behaviour: (request or request iterator, context) -> async iterator.
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
    deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """Return a handler whose behaviour is wrapped by `unary` or `stream` by response kind
    (and whose request deserializer is replaced, if one is given)."""
    deserializer = deserializer or handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(cast(UnaryBehavior, handler.unary_unary)), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            unary(cast(UnaryBehavior, handler.stream_unary)), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(_as_stream(handler.unary_stream)), deserializer, serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream(_as_stream(handler.stream_stream)), deserializer, serializer
        )
    return handler


def _as_stream(behavior: Callable[..., Any]) -> StreamBehavior:
    """Streaming handlers may be async generators or coroutines that call context.write();
    present both as async iterators so wrappers need one shape only."""
    if inspect.isasyncgenfunction(behavior):
        return behavior

    async def as_iterator(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        result = await behavior(request, context)
        if result is not None:
            yield result

    return as_iterator


class RefusedMessage(Exception):
    """Raised where a stream's incoming message is refused, instead of aborting there.

    The reader may be a task of the handler's own (DriverSession's pump) while a response
    is being sent; grpc rejects a status batch while a send is pending
    (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS), so the caller got no status and waited for its
    deadline. The exception travels out of the handler (a reader task hands it on like any
    read error), and the call's wrapper aborts from the handler's own task, after its sends.
    """

    def __init__(self, refusal: tuple[grpc.StatusCode, str]) -> None:
        super().__init__(refusal[1])
        self.refusal = refusal
