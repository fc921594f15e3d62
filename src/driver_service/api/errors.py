"""The one mapping from domain errors to gRPC status codes."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from driver_service.dispatch.offers import CommandNotFound, NotOfferRecipient, OfferNotOpen
from driver_service.domain import (
    DomainError,
    DriverNotFound,
    InvalidInput,
    RateLimited,
    ShuttingDown,
    StoreUnavailable,
)

_CODES: dict[type[DomainError], grpc.StatusCode] = {
    CommandNotFound: grpc.StatusCode.NOT_FOUND,
    NotOfferRecipient: grpc.StatusCode.PERMISSION_DENIED,
    OfferNotOpen: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    DriverNotFound: grpc.StatusCode.NOT_FOUND,
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
