"""gRPC status codes as HTTP answers: the status gRPC transcoding maps each code to (Google's
`google.rpc.Code` table) and one JSON body, `{"error": {"code", "status", "message"}}`."""

from __future__ import annotations

import json

import grpc
from starlette.responses import Response

#: HTTP status for each gRPC code, as gRPC transcoding (grpc-gateway, ESP) maps them.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

JSON_TYPE = "application/json"


class HttpError(Exception):
    """Ends a request with a gRPC code (its HTTP status) and a message for the caller.
    `http_status` overrides the mapped status for HTTP-only failures (413, 415, 405)."""

    def __init__(
        self, code: grpc.StatusCode, message: str, *, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = HTTP_STATUS[code] if http_status is None else http_status


def error_body(status: int, code: grpc.StatusCode, message: str) -> bytes:
    return json.dumps(
        {"error": {"code": status, "status": code.name, "message": message}},
        separators=(",", ":"),
    ).encode()


def error_response(error: HttpError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_body(error.http_status, error.code, error.message),
        status_code=error.http_status,
        media_type=JSON_TYPE,
        headers=headers,
    )
