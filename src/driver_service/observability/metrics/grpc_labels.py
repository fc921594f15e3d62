"""The label values go-grpc-prometheus uses, so existing dashboards and alerts work unchanged."""

from __future__ import annotations

from typing import Final

import grpc

UNARY: Final = "unary"
CLIENT_STREAM: Final = "client_stream"
SERVER_STREAM: Final = "server_stream"
BIDI_STREAM: Final = "bidi_stream"


def grpc_code_label(code: grpc.StatusCode) -> str:
    """The code as Go's `codes.Code.String()` spells it ("NotFound", "Canceled"), the value
    go-grpc-prometheus puts in `grpc_code`."""
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """go-grpc-prometheus's `grpc_type` for an RPC's shape."""
    if request_streaming:
        return BIDI_STREAM if response_streaming else CLIENT_STREAM
    return SERVER_STREAM if response_streaming else UNARY


def split_method(full_method: str) -> tuple[str, str]:
    """ "/pkg.Service/Method" -> ("pkg.Service", "Method")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service or "unknown", method or "unknown")
