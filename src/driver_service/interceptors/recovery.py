"""Interceptor that turns an exception escaping a handler into INTERNAL, without details."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from driver_service.interceptors._handlers import StreamBehavior, UnaryBehavior, wrap_handler

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error"


class RecoveryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Outermost interceptor: callers get "internal server error"; the log gets the stack."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def recovered(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unhandled error in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

            return recovered

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def recovered(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unhandled error in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

            return recovered

        return wrap_handler(handler, unary, stream)
