"""Exceptions raised by the client, one per status code a caller may want to handle.

DriverServiceError           any failed call; .code and .details from the server
├── InvalidArgument          fix the request; retrying will not help
├── NotFound                 no such driver (yet)
├── Unauthenticated          missing, invalid or expired credentials
├── PermissionDenied         credentials valid but not allowed for this driver/method
├── ResourceExhausted        rate or size limit hit; back off
├── Unavailable              server down, overloaded or draining; retry (elsewhere)
├── DeadlineExceeded         no answer within the deadline
├── Cancelled                the call was cancelled
└── InternalError            a server bug (INTERNAL, UNKNOWN, DATA_LOSS, …)
"""

from __future__ import annotations

import grpc


class DriverServiceError(Exception):
    """A call failed; `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgument(DriverServiceError):
    pass


class NotFound(DriverServiceError):
    pass


class Unauthenticated(DriverServiceError):
    pass


class PermissionDenied(DriverServiceError):
    pass


class ResourceExhausted(DriverServiceError):
    pass


class Unavailable(DriverServiceError):
    pass


class DeadlineExceeded(DriverServiceError):
    pass


class Cancelled(DriverServiceError):
    pass


class InternalError(DriverServiceError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[DriverServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.RpcError) -> DriverServiceError:
    """The client exception for a failed call (`grpc.RpcError` carries code and details)."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    return _BY_CODE.get(code, InternalError)(code, details)
