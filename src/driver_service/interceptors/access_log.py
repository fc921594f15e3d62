"""One structured access-log line per call: method, peer, duration_ms, code, request_id and
messages in and out. Metadata is never logged, so the authorization header cannot leak.

Calls that end OK are logged at INFO, server faults (INTERNAL, UNKNOWN, DATA_LOSS) at
WARNING, the rest (the caller's business) at INFO. When the record would reach only the
service's JSON handler, the line is written straight from its fields (a few µs); any other
logging setup (a test's handler, a user's filters) gets an ordinary LogRecord with the same
fields as attributes.
"""

from __future__ import annotations

import logging
from typing import Final

import grpc

# The module, not the name: logs imports the request id from this package (import cycle).
from driver_service import logs

_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
_OK = grpc.StatusCode.OK

#: --access-log values.
ACCESS_LOG_ALL: Final = "all"
ACCESS_LOG_ERRORS: Final = "errors"
ACCESS_LOG_OFF: Final = "off"


class AccessLog:
    """Writes the access-log line of each call; with `errors_only`, calls that ended OK are
    skipped (a deployment that wants volume without a line per call)."""

    __slots__ = ("_errors_only", "_log")

    def __init__(self, logger: logging.Logger | None = None, *, errors_only: bool = False) -> None:
        self._log = logger or logging.getLogger("driver_service.rpc")
        self._errors_only = errors_only

    def record(
        self,
        method: str,
        peer: str,
        duration_s: float,
        code: grpc.StatusCode,
        request_id: str,
        messages_in: int,
        messages_out: int,
        streaming: bool,
    ) -> None:
        if self._errors_only and code is _OK:
            return
        level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        log = self._log
        if not log.isEnabledFor(level):
            return
        duration_ms = round(duration_s * 1000, 3)
        message = (
            f"rpc {method} code={code.name} duration_ms={duration_ms:.3f} peer={peer} "
            f"request_id={request_id}"
        )
        if streaming:
            message += f" in={messages_in} out={messages_out}"
        fields: dict[str, str | int | float] = {
            "request_id": request_id,
            "method": method,
            "peer": peer,
            "duration_ms": duration_ms,
            "code": code.name,
            "messages_in": messages_in,
            "messages_out": messages_out,
        }
        sink = logs.fast_json_sink(log, level)
        if sink is not None:
            sink.write_fields(level, log.name, message, fields)
        else:
            log.log(level, "%s", message, extra=fields)
