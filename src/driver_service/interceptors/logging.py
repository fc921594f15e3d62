"""Interceptor that writes one structured log record per call: method, peer, duration_ms,
code, request_id and, for streams, messages in and out. Metadata is never logged, so the
authorization header cannot leak into logs."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from driver_service.interceptors._handlers import (
    HandlerCache,
    StreamBehavior,
    UnaryBehavior,
    wrap_handler,
)
from driver_service.interceptors._status import code_of_exception, status_code
from driver_service.interceptors.request_id import REQUEST_ID

#: Codes that mean the server failed, logged at WARNING; the rest are the caller's business.
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)


class _Call:
    """What one call did, filled in as it runs."""

    __slots__ = ("messages_in", "messages_out", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.messages_in = 0
        self.messages_out = 0


class LoggingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Logs each call once at its end (INFO; WARNING for INTERNAL/UNKNOWN/DATA_LOSS).
    With `errors_only`, calls that end OK are not logged: a log line costs about as much CPU
    as a whole GetDriver, so high-volume deployments may keep only the failures."""

    def __init__(self, logger: logging.Logger | None = None, *, errors_only: bool = False) -> None:
        self._log = logger or logging.getLogger("driver_service.rpc")
        self._errors_only = errors_only
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
        streaming_out = bool(handler.response_streaming)

        async def counted(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
            async for message in requests:
                call.messages_in += 1
                yield message

        def prepare(request: Any, call: _Call) -> Any:
            if streaming_in:
                return counted(request, call)
            call.messages_in = 1
            return request

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def logged(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                call = _Call()
                try:
                    response = await behavior(prepare(request, call), context)
                except BaseException as exc:
                    self._emit(
                        method, context, call, code_of_exception(exc, context), streaming_in, False
                    )
                    raise
                call.messages_out = 1
                code = status_code(context.code())
                self._emit(method, context, call, code, streaming_in, False)
                return response

            return logged

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def logged(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                call = _Call()
                code = grpc.StatusCode.OK
                try:
                    async for response in behavior(prepare(request, call), context):
                        call.messages_out += 1
                        yield response
                    code = status_code(context.code())
                except BaseException as exc:
                    code = code_of_exception(exc, context)
                    raise
                finally:
                    self._emit(method, context, call, code, streaming_in, streaming_out)

            return logged

        return wrap_handler(handler, unary, stream)

    def _emit(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        call: _Call,
        code: grpc.StatusCode,
        streaming_in: bool,
        streaming_out: bool,
    ) -> None:
        if self._errors_only and code is grpc.StatusCode.OK:
            return
        duration_ms = round((time.perf_counter() - call.started) * 1000, 3)
        try:
            peer = context.peer()
        except Exception:  # noqa: BLE001 - the call may already be torn down
            peer = "unknown"
        fields: dict[str, Any] = {
            "method": method,
            "peer": peer,
            "duration_ms": duration_ms,
            "code": code.name,
            "request_id": REQUEST_ID.get(),
            "messages_in": call.messages_in,
            "messages_out": call.messages_out,
        }
        level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        stream_part = (
            f" in={call.messages_in} out={call.messages_out}"
            if streaming_in or streaming_out
            else ""
        )
        self._log.log(
            level,
            "rpc %s code=%s duration_ms=%.3f peer=%s request_id=%s%s",
            method,
            code.name,
            duration_ms,
            peer,
            fields["request_id"],
            stream_part,
            extra={"rpc": fields, **fields},
        )
