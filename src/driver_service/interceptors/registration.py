"""Every service's methods in one table: one dict lookup per call, however many services.

grpc.aio (1.85) serves each method registered by name (`add_registered_method_handlers`,
which generated `add_*_to_server` functions call) with a pending request of its own, and
its accept loop waits on all of them with `asyncio.wait` for every call it takes: each
registered method adds callbacks, set entries and an isinstance check to every call
(callgrind, GetDriver: three services' ten methods registered so cost ~397 k instructions a
call, the same served from one table ~343 k, the grpc.aio floor with its four ~360 k;
`serve` registers 33; BENCHMARKS.md, issue 20). Generic handlers share one pending request,
so the methods here are served through one generic handler holding all of them, looked up
first, as grpc.aio looks registered methods up before generic handlers. (grpc core then knows
no method by name: grpc's own OpenTelemetry plugin, not used here, would label every method
"other"; the service's metrics name each one.)
"""

from __future__ import annotations

from asyncio import get_running_loop
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc

from driver_service.interceptors.call_metadata import keep_metadata
from driver_service.observability.context import CALL, task_on

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
#: What each handler is served as: (full method name, handler) -> handler.
Wrap: TypeAlias = Callable[[str, "_Handler"], "_Handler"]


def _as_is(method: str, handler: _Handler) -> _Handler:
    return handler


class MethodTable(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Handlers by full method name (`/pkg.Service/Method`), one generic handler for all."""

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[str, _Handler] = {}

    def add(self, method: str, handler: _Handler) -> None:
        self._handlers[method] = handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = self._handlers.get(handler_call_details.method)
        if handler is not None:  # keep_metadata, inline (a frame less on every call)
            outer = CALL.get()
            metadata = handler_call_details.invocation_metadata
            CALL.set([outer[0], outer[1], task_on(get_running_loop()), metadata])
        return handler


class _WrappedHandlers(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler that cannot list its methods, each handler it finds wrapped."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        keep_metadata(handler_call_details)
        return self._wrap(handler_call_details.method, handler)


class TableServer:
    """Stands in for the server where services are registered: methods registered by name
    go into one MethodTable (the real server's first generic handler), each as `wrap`
    makes it, once; generic handlers that cannot list their methods are asked after it,
    each in turn, their handlers wrapped on every call. Everything else is the real
    server's."""

    def __init__(self, server: grpc.aio.Server, wrap: Wrap = _as_is) -> None:
        self._server = server
        self._wrap = wrap
        self._table = MethodTable()
        server.add_generic_rpc_handlers((self._table,))

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedHandlers(handler, self._wrap) for handler in handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, _Handler]
    ) -> None:
        for name, handler in method_handlers.items():
            method = f"/{service_name}/{name}"
            self._table.add(method, self._wrap(method, handler))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


# Registration helpers such as grpc_reflection's pick their asyncio servicer by isinstance.
grpc.aio.Server.register(TableServer)  # type: ignore[attr-defined]


def one_table(server: grpc.aio.Server, wrap: Wrap = _as_is) -> grpc.aio.Server:
    """`server` for the generated `add_*_to_server` functions, every method they register
    by name served from one table (each handler as `wrap` makes it)."""
    return cast("grpc.aio.Server", TableServer(server, wrap))
