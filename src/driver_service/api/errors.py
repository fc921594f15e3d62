"""The one mapping from domain errors to gRPC status codes."""

from __future__ import annotations

from types import TracebackType
from typing import Any, NoReturn

import grpc

from driver_service.dispatch.domain.commands import CommandNotFound, NotOfferRecipient, OfferNotOpen
from driver_service.domain import (
    DomainError,
    DriverNotFound,
    InvalidInput,
    RateLimited,
    ShuttingDown,
    StoreUnavailable,
)
from driver_service.domain.errors import EventsExpired, VersionMismatch, ZoneExists, ZoneNotFound
from driver_service.domain.webhooks import WebhookExists, WebhookNotFound

_CODES: dict[type[DomainError], grpc.StatusCode] = {
    CommandNotFound: grpc.StatusCode.NOT_FOUND,
    NotOfferRecipient: grpc.StatusCode.PERMISSION_DENIED,
    OfferNotOpen: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    DriverNotFound: grpc.StatusCode.NOT_FOUND,
    ZoneNotFound: grpc.StatusCode.NOT_FOUND,
    ZoneExists: grpc.StatusCode.ALREADY_EXISTS,
    WebhookNotFound: grpc.StatusCode.NOT_FOUND,
    WebhookExists: grpc.StatusCode.ALREADY_EXISTS,
    VersionMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    EventsExpired: grpc.StatusCode.OUT_OF_RANGE,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> NoReturn:
    """End the call with the status code for `error` and its message (never internals)."""
    await context.abort(status_for(error), str(error))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class AbortOnDomainError:
    """`async with AbortOnDomainError(context): ...` ends the call with `abort_with`
    when the body raises a DomainError, and lets every other exception through.

    The same as `try: ... except DomainError as error: await abort_with(context, error)`,
    written once. Inside an async generator (a streaming handler) the abort runs in the
    generator itself, as it must. Never swallows an exception (`__aexit__` returns None), so
    type checkers know the body's assignments and returns hold after the block. It costs an
    object and two awaits per call: the hot unary path (GetDriver) keeps its try/except."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, DomainError):
            await abort_with(self._context, exc)
