"""Interceptor that gives every call a request id: the caller's `x-request-id` if it is sane,
else a new one; kept in a ContextVar for log lines and returned in the response headers."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from driver_service.interceptors._handlers import (
    HandlerCache,
    StreamBehavior,
    UnaryBehavior,
    wrap_handler,
)

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
#: Ids are copied into logs and headers: no spaces, quotes or control characters.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}\Z")

#: The current call's request id ("-" outside a call).
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")


def current_request_id() -> str:
    return REQUEST_ID.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(metadata: Any) -> str:
    """The caller's id if present and safe, else a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _SAFE_ID.match(value):
            return value
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so a format string can show it on each line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class RequestIdInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Sets the request id for the call's task and returns it to the caller.

    Unary responses carry it in the trailers: headers sent before a failure would commit
    the call, and gRPC clients then never retry it (a GetDriver answered UNAVAILABLE while
    the store is down must stay retryable), and sending headers separately costs a round of
    gRPC core work per call (~50 µs, measured). Streams get it in the headers at once."""

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
        return self._cache.wrap(handler, self._wrap)

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        def start(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str]]:
            # Each RPC runs in its own task, so the value needs no reset afterwards.
            request_id = request_id_from(context.invocation_metadata())
            REQUEST_ID.set(request_id)
            return ((REQUEST_ID_HEADER, request_id),)

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def with_id(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                context.set_trailing_metadata(start(context))
                return await behavior(request, context)

            return with_id

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def with_id(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                await context.send_initial_metadata(start(context))
                async for response in behavior(request, context):
                    yield response

            return with_id

        return wrap_handler(handler, unary, stream)
