"""Every per-call concern of the server in one wrapper per method, for all four RPC kinds.

In order, for each call: a request id (the caller's `x-request-id` if sane, else a new one)
returned to a caller that sent one; authentication and per-method authorization;
undecodable requests answered INVALID_ARGUMENT; each incoming stream message checked
(decodable, and naming the token's own driver) before the handler sees it;
go-grpc-prometheus metrics; an escaping exception answered INTERNAL without details; one
access-log line at the end.

One wrapper instead of a chain of interceptors because in grpc.aio each interceptor layer is
an extra coroutine per call and an extra async generator per stream message, and the
CPU per call is the service's throughput limit (BENCHMARKS.md: the six-interceptor chain cost
48 % of the bare server's throughput). The wrapped handler is built once per method.
"""

from __future__ import annotations

import time
from asyncio import get_running_loop
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from driver_service.interceptors._handlers import (
    RefusedMessage,
    StreamBehavior,
    UnaryBehavior,
    wrap_handler,
)
from driver_service.interceptors._status import code_of_exception, status_code
from driver_service.interceptors.access_log import AccessLog
from driver_service.interceptors.auth import (
    AUTHORIZATION_HEADER,
    Admissions,
    AuthPolicy,
    MessageCheck,
    Refusal,
    set_principal,
)
from driver_service.interceptors.call_metadata import keep_metadata
from driver_service.interceptors.decoding import UNDECODABLE, tolerant, undecodable_message
from driver_service.interceptors.recovery import recover, refuse
from driver_service.interceptors.registration import one_table
from driver_service.interceptors.request_id import (
    REQUEST_ID_HEADER,
    is_safe_request_id,
    new_request_id,
)
from driver_service.observability.context import CALL, SCOPE_REQUEST_ID, CallScope, task_on
from driver_service.observability.metrics.catalogue import MethodMetrics, ServiceMetrics
from driver_service.observability.metrics.core import LoopCounter
from driver_service.observability.metrics.grpc_labels import grpc_type

_OK = grpc.StatusCode.OK
_INTERNAL = grpc.StatusCode.INTERNAL
if TYPE_CHECKING:
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


def _peer_of(context: _Context) -> str:
    """The call's peer for its access-log line."""
    try:
        return context.peer()
    except Exception:  # noqa: BLE001 - the call may already be torn down
        return "unknown"


class _Counts:
    """Messages of one call, for the access log; for a client stream, also its check of each
    incoming message (the token's own driver), which its method's deserializer applies."""

    __slots__ = ("check", "received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.check: MessageCheck | None = None


#: The current client-streaming call's counts and check (`_reading`), set in the call's task
#: before its handler runs (tasks the handler starts, a session's reader, inherit it).
_READS: ContextVar[_Counts | None] = ContextVar("stream_reads", default=None)


def _reading(
    deserializer: Callable[[bytes], Any], received: LoopCounter | None, bad_request: Refusal
) -> Callable[[bytes], Any]:
    """A client-streaming method's request deserializer that also counts and checks each
    message, inside grpc's read and before the handler (or a reader task of its own, or
    `context.read()`) gets it: a refused message raises RefusedMessage there, which ends the
    call (answered by its wrapper), so it and every later one never reach the handler. No
    coroutine or object of ours per message, and nothing held between messages."""

    def decode(data: bytes) -> Any:
        reads = _READS.get()
        if reads is not None:
            reads.received += 1
            if received is not None:
                received.value += 1.0  # LoopCounter.inc, without the call
        try:
            message = deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure means the same to the caller
            raise RefusedMessage(bad_request) from None
        if reads is not None:
            check = reads.check
            if check is not None and (refusal := check(message)) is not None:
                raise RefusedMessage(refusal)
        return message

    return decode


class CallPipeline(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The server's one interceptor. `auth=None` (only for `--insecure` development) skips
    authentication; `access_log=None` writes no access log; `metrics=None` counts nothing;
    `request_ids=False` neither reads nor returns request ids (benchmarks of the parts)."""

    MAX_METHODS = 4096

    def __init__(
        self,
        *,
        auth: AuthPolicy | None = None,
        access_log: AccessLog | None = None,
        metrics: ServiceMetrics | None = None,
        request_ids: bool = True,
    ) -> None:
        self._admissions = Admissions(auth) if auth is not None else None
        self._access_log = access_log
        self._metrics = metrics
        self._request_ids = request_ids
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        keep_metadata(handler_call_details)
        return self.wrap(handler_call_details.method, handler)

    def wrap(self, method: str, handler: _Handler) -> _Handler:
        """`handler` of `method` with the pipeline around it, built on the method's first call
        (grpc hands out the same handler object for a method on every call)."""
        entry = self._wrapped.get(method)
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = self._build(method, handler)
        if len(self._wrapped) >= self.MAX_METHODS:  # only if handlers are rebuilt per call
            self._wrapped.clear()
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def around(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """`server` for the generated `add_*_to_server` functions, wrapping every handler
        they register in the pipeline: the same calls as `interceptors=[pipeline]`, without
        grpc.aio's interceptor hop (a coroutine and a lookup on every call), and every
        method found with one lookup (interceptors/registration.py)."""
        return one_table(server, self.wrap)

    def _build(self, method: str, handler: _Handler) -> _Handler:
        call = _MethodCalls(
            method,
            handler,
            admissions=self._admissions,
            access_log=self._access_log,
            metrics=self._metrics,
            request_ids=self._request_ids,
        )
        deserializer = handler.request_deserializer
        if deserializer is not None:
            deserializer = (
                _reading(
                    deserializer,
                    call.metrics.msg_received if call.metrics is not None else None,
                    call.bad_request,
                )
                if call.streaming_in
                else tolerant(deserializer)
            )
        return wrap_handler(handler, call.unary, call.stream, deserializer)


class _MethodCalls:
    """What the pipeline does around the calls of one method; everything that does not
    change per call is resolved here, once."""

    __slots__ = (
        "access_log",
        "admissions",
        "bad_request",
        "method",
        "metrics",
        "request_ids",
        "rule",
        "streaming_in",
    )

    def __init__(
        self,
        method: str,
        handler: _Handler,
        *,
        admissions: Admissions | None,
        access_log: AccessLog | None,
        metrics: ServiceMetrics | None,
        request_ids: bool,
    ) -> None:
        self.method = method
        self.streaming_in = bool(handler.request_streaming)
        streaming_out = bool(handler.response_streaming)
        self.metrics: MethodMetrics | None = (
            metrics.method(method, grpc_type(self.streaming_in, streaming_out))
            if metrics is not None
            else None
        )
        exempt = admissions is None or admissions.policy.exempt.exempt(method)
        self.admissions = None if exempt else admissions
        self.rule = admissions.policy.rules.get(method) if admissions is not None else None
        self.access_log = access_log
        self.request_ids = request_ids
        self.bad_request: Refusal = (
            grpc.StatusCode.INVALID_ARGUMENT,
            undecodable_message(method),
        )

    def begin(  # noqa: PLR0912 - the hot path, inlined
        self, context: _Context
    ) -> tuple[str, bool, MessageCheck | None, Refusal | None]:
        """The call's request id (set for its log lines), whether to return it (only to a
        caller that sent one: its own if sane, else the one it is logged under), the call's
        per-message check, and why it is refused, if it is; one pass over the metadata.
        The id and the caller go into the scope the handler lookup set for this call (one
        ContextVar set per call, not three), or into new scopes where it set none."""
        request_id = ""
        asked = False
        authorization: str | None = None
        auth_headers = 0
        # call_metadata.kept_scope, inline (a frame less): [request id, caller, task, metadata]
        kept = CALL.get()
        scope: CallScope | None = kept if kept[2] is task_on(get_running_loop()) else None
        metadata = scope[3] if scope is not None else context.invocation_metadata() or ()
        for key, value in metadata:
            if key == AUTHORIZATION_HEADER:
                auth_headers += 1
                if auth_headers == 1 and isinstance(value, str):
                    authorization = value
            elif key == REQUEST_ID_HEADER and not request_id:
                asked = True
                if is_safe_request_id(value):
                    request_id = value
        if self.request_ids:
            request_id = request_id or new_request_id()
            # Each call runs in its own task: no reset needed; the kept scope is this task's.
            if scope is not None:
                scope[0] = request_id
            else:
                replaced = CALL.get().copy()
                replaced[SCOPE_REQUEST_ID] = request_id
                CALL.set(replaced)
        else:
            request_id = "-"
            asked = False
        if self.admissions is None:
            return request_id, asked, None, None
        principal, check, refusal = self.admissions.decide(
            authorization, auth_headers, self.method, self.rule
        )
        if principal is not None:
            if scope is not None:
                scope[1] = principal
            else:
                set_principal(principal)
        return request_id, asked, check, refusal

    def admit_request(
        self, request: Any, context: _Context, check: MessageCheck | None, counts: _Counts
    ) -> tuple[Any, _Context, Refusal | None]:
        """What the handler reads (grpc's stream, its messages counted and checked by the
        method's deserializer, or the single request) and why the single request is refused,
        if it is (the caller aborts: no coroutine per call)."""
        if self.streaming_in:
            # In the call's own task (one per call): no reset needed.
            counts.check = check
            _READS.set(counts)
            return request, context, None
        counts.received = 1
        if self.metrics is not None:
            self.metrics.msg_received.inc()
        if request is UNDECODABLE:
            return request, context, self.bad_request
        if check is not None:
            return request, context, check(request)
        return request, context, None

    def started(self) -> float:
        metrics = self.metrics
        if metrics is not None:
            metrics.started.inc()
            if metrics.open_streams is not None:
                metrics.open_streams.inc()
        return time.perf_counter()

    def finish(
        self,
        context: _Context,
        started: float,
        code: grpc.StatusCode,
        request_id: str,
        received: int,
        sent: int,
        streaming: bool,
        peer: str | None = None,
    ) -> None:
        """Count and log the call's end; `peer` if it was read while the call was alive."""
        duration = time.perf_counter() - started
        metrics = self.metrics
        if metrics is not None:
            metrics.handling.observe(duration)
            # StatusCode hashes in Python (Enum.__hash__): OK, the usual code, skips it.
            (metrics.handled_ok if code is _OK else metrics.handled[code]).inc()
            if metrics.open_streams is not None:
                metrics.open_streams.dec()
        if self.access_log is not None:
            if peer is None:
                peer = _peer_of(context)
            self.access_log.record(
                self.method,
                peer,
                duration,
                code,
                request_id,
                received,
                sent,
                streaming,
            )

    def unary(self, behavior: UnaryBehavior) -> UnaryBehavior:
        """Calls with one response (unary, client streaming): the hot path, so everything
        that cannot change per call is resolved here, once."""
        if not self.streaming_in:
            return self._unary_request(behavior)
        metrics = self.metrics
        begin = self.begin
        admit = self.admit_request
        started_at = self.started
        finish = self.finish
        streaming_in = self.streaming_in
        method = self.method

        async def call(request: Any, context: _Context) -> Any:
            started = started_at()
            counts = _Counts()
            request_id = "-"
            code = _OK
            try:
                request_id, echo, check, refusal = begin(context)
                if echo:
                    # Trailers, not headers: headers sent before a failure commit the call
                    # and clients never retry it, and a separate send costs ~50 µs. Only to
                    # a caller that sent an id: a trailer costs grpc 0.5-2 % of a GetDriver.
                    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
                if refusal is None:
                    request, context, refusal = admit(request, context, check, counts)
                if refusal is not None:
                    await context.abort(*refusal)
                response = await behavior(request, context)
            except grpc.aio.AbortError:
                code = status_code(context.code())
                raise
            except RefusedMessage as refused:
                code = refused.refusal[0]
                await refuse(context, refused)
                return None
            except Exception:  # noqa: BLE001 - logged and answered INTERNAL by recover()
                code = _INTERNAL
                await recover(context, method)
                return None
            except BaseException as exc:
                code = code_of_exception(exc, context)
                raise
            else:
                code = status_code(context.code())
                if code is _OK:
                    counts.sent = 1
                    if metrics is not None:
                        metrics.msg_sent.inc()
                return response
            finally:
                finish(
                    context, started, code, request_id, counts.received, counts.sent, streaming_in
                )

        return call

    def _unary_request(self, behavior: UnaryBehavior) -> UnaryBehavior:  # noqa: PLR0915
        """Unary calls (GetDriver: the hottest path of all): the same steps as the client
        streaming path, with the one request checked inline and the counters bumped in
        place (no per-call objects or calls beyond what each concern needs)."""
        metrics = self.metrics
        counters = (
            None
            if metrics is None
            else (metrics.started, metrics.msg_received, metrics.msg_sent, metrics.handled_ok)
        )
        begin = self.begin
        finish = self.finish
        method = self.method
        bad_request = self.bad_request
        clock = time.perf_counter
        handling = metrics.handling if metrics is not None else None
        access_log = self.access_log

        async def call(request: Any, context: _Context) -> Any:  # noqa: PLR0912, PLR0915 - inlined
            started = clock()
            if counters is not None:
                counters[0].value += 1.0  # LoopCounter.inc, without the call
            request_id = "-"
            code = _OK
            received = sent = 0
            try:
                request_id, echo, check, refusal = begin(context)
                if echo:
                    # Trailers, not headers: headers sent before a failure commit the call
                    # and clients never retry it, and a separate send costs ~50 µs.
                    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
                if refusal is None:
                    received = 1
                    if counters is not None:
                        counters[1].value += 1.0
                    if request is UNDECODABLE:
                        refusal = bad_request
                    elif check is not None:
                        refusal = check(request)
                if refusal is not None:
                    await context.abort(*refusal)
                response = await behavior(request, context)
            except grpc.aio.AbortError:
                code = status_code(context.code())
                raise
            except Exception:  # noqa: BLE001 - logged and answered INTERNAL by recover()
                code = _INTERNAL
                await recover(context, method)
                return None
            except BaseException as exc:
                code = code_of_exception(exc, context)
                raise
            else:
                # status_code() inline for the usual call: grpc.aio reports None until set.
                code = _OK if (raw := context.code()) is None else status_code(raw)
                if code is _OK:
                    sent = 1
                    if counters is not None:
                        counters[2].value += 1.0
                return response
            finally:
                if code is _OK and counters is not None and handling is not None:
                    # finish() inline for the usual call (a frame and a counter call less).
                    duration = clock() - started
                    handling.counts[bisect_left(handling.bounds, duration)] += 1
                    handling.sum += duration
                    counters[3].value += 1.0
                    if access_log is not None:
                        try:  # _peer_of, inline (a frame less)
                            peer = context.peer()
                        except Exception:  # noqa: BLE001 - the call may already be torn down
                            peer = "unknown"
                        access_log.record(method, peer, duration, code, request_id, received, sent)
                else:
                    finish(context, started, code, request_id, received, sent, False)

        return call

    def stream(self, behavior: StreamBehavior) -> StreamBehavior:
        """Server-streaming and bidirectional calls."""

        async def call(request: Any, context: _Context) -> AsyncIterator[Any]:
            started = self.started()
            counts = _Counts()
            request_id = "-"
            code = _OK
            sent = self.metrics.msg_sent if self.metrics is not None else None
            # Read while the call is alive: when a client cancels a stream, grpcio (1.85.4)
            # may free the call before this generator's `finally` runs, and context.peer()
            # there crashes the process (SIGSEGV; tests/chaos, the watcher storms).
            peer = context.peer() if self.access_log is not None else None
            try:
                request_id, echo, check, refusal = self.begin(context)
                if echo:
                    await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                if refusal is None:
                    request, context, refusal = self.admit_request(request, context, check, counts)
                if refusal is not None:
                    await context.abort(*refusal)
                async for response in behavior(request, context):
                    counts.sent += 1
                    if sent is not None:
                        sent.inc()
                    yield response
                code = status_code(context.code())
            except grpc.aio.AbortError:
                code = status_code(context.code())
                raise
            except RefusedMessage as refused:
                code = refused.refusal[0]
                await refuse(context, refused)
            except Exception:  # noqa: BLE001 - logged and answered INTERNAL by recover()
                code = _INTERNAL
                await recover(context, self.method)
            except BaseException as exc:
                code = code_of_exception(exc, context)
                raise
            finally:
                self.finish(
                    context, started, code, request_id, counts.received, counts.sent, True, peer
                )

        return call
