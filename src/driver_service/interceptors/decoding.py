"""Interceptor that answers an undecodable request with INVALID_ARGUMENT.

Stock grpcio answers a body that is not valid protobuf with UNKNOWN and the Python
exception's name in the message. Here the deserializer returns a marker instead of raising,
and the call (or the stream, at that message) ends with a message a caller can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from driver_service.interceptors._handlers import (
    HandlerCache,
    StreamBehavior,
    UnaryBehavior,
    wrap_handler,
)


class Undecodable:
    """Stands in for a message whose bytes did not parse."""

    __slots__ = ()


UNDECODABLE = Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure means the same to the caller
            return UNDECODABLE

    return decode


class DecodingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Second in the chain, so inner interceptors (auth) only ever see decoded messages."""

    def __init__(self) -> None:
        self._cache = HandlerCache()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        return self._cache.wrap(handler, lambda h: self._wrap(h, method))

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        assert handler.request_deserializer is not None
        message = (
            f"the request to {method} is not a valid protobuf message of the method's request type"
        )
        streaming = handler.request_streaming

        async def reject(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        async def checked(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for request in requests:
                if request is UNDECODABLE:
                    await reject(context)
                yield request

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def decoded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if streaming:
                    request = checked(request, context)
                elif request is UNDECODABLE:
                    await reject(context)
                return await behavior(request, context)

            return decoded

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def decoded(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if streaming:
                    request = checked(request, context)
                elif request is UNDECODABLE:
                    await reject(context)
                async for response in behavior(request, context):
                    yield response

            return decoded

        return wrap_handler(handler, unary, stream, _tolerant(handler.request_deserializer))
