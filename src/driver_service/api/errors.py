"""The one mapping from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from driver_service.domain import (
    DomainError,
    DriverNotFound,
    InvalidInput,
    ShuttingDown,
    StoreUnavailable,
)

_CODES: dict[type[DomainError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    DriverNotFound: grpc.StatusCode.NOT_FOUND,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
