"""Interceptor that turns an exception escaping a handler into INTERNAL, without details."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from driver_service.interceptors._handlers import (
    HandlerCache,
    StreamBehavior,
    UnaryBehavior,
    wrap_handler,
)

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error"


async def _recover(context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    """Answer INTERNAL for an unexpected error, unless the call is already over (the peer
    went away, or the handler's own abort failed on a dead connection): then there is no
    one to answer, and aborting again would only raise "abort already called"."""
    if context.done() or context.cancelled():
        log.debug("error in %s after the call ended", method, exc_info=True)
        return
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


class RecoveryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Outermost interceptor: callers get "internal server error"; the log gets the stack."""

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
        if handler is None:
            return handler
        method = handler_call_details.method
        return self._cache.wrap(handler, lambda h: self._wrap(h, method))

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def recovered(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception:  # noqa: BLE001 - logged and answered by _recover
                    await _recover(context, method)

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
                except Exception:  # noqa: BLE001 - logged and answered by _recover
                    await _recover(context, method)

            return recovered

        return wrap_handler(handler, unary, stream)
