"""Interceptor that records go-grpc-prometheus style metrics for all four RPC kinds: calls
started and handled by code, handling time, stream messages in and out, open streams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from driver_service.interceptors._handlers import (
    HandlerCache,
    StreamBehavior,
    UnaryBehavior,
    counted_requests,
    wrap_handler,
)
from driver_service.interceptors._status import code_of_exception, status_code
from driver_service.metrics import MethodMetrics, ServiceMetrics, grpc_type

_OK = grpc.StatusCode.OK


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Innermost interceptor: it measures the handler itself, so calls refused by auth
    (outside it) are not counted here; the logging interceptor records those."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
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
        streaming_in = bool(handler.request_streaming)
        m = self._metrics.method(method, grpc_type(streaming_in, bool(handler.response_streaming)))
        return wrap_handler(handler, _unary(m, streaming_in), _stream(m, streaming_in))


def _begin(m: MethodMetrics, request: Any, streaming_in: bool) -> Any:
    """Count the start and the request(s); return what the handler should read."""
    m.started.inc()
    if m.open_streams is not None:
        m.open_streams.inc()
    if streaming_in:
        return counted_requests(request, m.msg_received.inc)
    m.msg_received.inc()
    return request


def _end(m: MethodMetrics, code: grpc.StatusCode, started: float) -> None:
    m.handling.observe(time.perf_counter() - started)
    m.handled[code].inc()
    if m.open_streams is not None:
        m.open_streams.dec()


def _unary(m: MethodMetrics, streaming_in: bool) -> Callable[[UnaryBehavior], UnaryBehavior]:
    def wrap(behavior: UnaryBehavior) -> UnaryBehavior:
        async def measured(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = _OK
            try:
                response = await behavior(_begin(m, request, streaming_in), context)
            except BaseException as exc:
                code = code_of_exception(exc, context)
                raise
            else:
                code = status_code(context.code())
                if code is _OK:
                    m.msg_sent.inc()
                return response
            finally:
                _end(m, code, started)

        return measured

    return wrap


def _stream(m: MethodMetrics, streaming_in: bool) -> Callable[[StreamBehavior], StreamBehavior]:
    def wrap(behavior: StreamBehavior) -> StreamBehavior:
        async def measured(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = _OK
            sent = m.msg_sent
            try:
                async for response in behavior(_begin(m, request, streaming_in), context):
                    sent.inc()
                    yield response
                code = status_code(context.code())
            except BaseException as exc:
                code = code_of_exception(exc, context)
                raise
            finally:
                _end(m, code, started)

        return measured

    return wrap
