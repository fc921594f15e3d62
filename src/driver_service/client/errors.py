"""Exceptions raised by the client, one per status code a caller may want to handle.

DriverServiceError           any failed call; .code and .details from the server
├── InvalidArgument          fix the request; retrying will not help
├── ClientConfigError        the client's own settings (a CA or key file) are unusable
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

from driver_service.client._hints import Transport, connection_hint


class DriverServiceError(Exception):
    """A call failed; `code` is the gRPC status code, `details` the server's message, `hint`
    (when a connection failed) what is probably wrong on the client's side."""

    def __init__(self, code: grpc.StatusCode, details: str, hint: str | None = None) -> None:
        super().__init__(f"{code.name}: {hint}" if hint else f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.hint = hint


class InvalidArgument(DriverServiceError):
    pass


class ClientConfigError(DriverServiceError, ValueError):
    """The client's own settings are unusable (a file missing, a key without certificate),
    found before any call; the message names the setting and its environment variable."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message)
        self.args = (message,)


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


def from_rpc_error(error: grpc.RpcError, transport: Transport | None = None) -> DriverServiceError:
    """The client exception for a failed call (`grpc.RpcError` carries code and details);
    `transport` (the client's TLS settings) lets a failed connection say what to change."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    return error_for(code, details, transport)


def error_for(
    code: grpc.StatusCode, details: str, transport: Transport | None = None
) -> DriverServiceError:
    """The exception for a status; a hint on UNAVAILABLE when the connection failed."""
    hint = connection_hint(details, transport) if code is grpc.StatusCode.UNAVAILABLE else None
    return _BY_CODE.get(code, InternalError)(code, details, hint)
