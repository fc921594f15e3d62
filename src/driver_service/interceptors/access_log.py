"""One structured access-log line per call: method, peer, duration_ms, code, request_id and
messages in and out. Metadata is never logged, so the authorization header cannot leak.

Calls that end OK are logged at INFO, server faults (INTERNAL, UNKNOWN, DATA_LOSS) at
WARNING, the rest (the caller's business) at INFO. When the record would reach only the
service's JSON handler, the line is built in one f-string and queued on the handler (~3 µs
instead of ~35 µs through a LogRecord and the formatter), its message short because the
fields carry everything; any other logging setup (text logs on a terminal, a test's
handler, a user's filters) gets an ordinary LogRecord with a readable message and the same
fields as attributes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import grpc

# The module, not the name: logs imports the request id from this package (import cycle).
from driver_service.observability import logs

_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
_OK = grpc.StatusCode.OK
#: StatusCode.name goes through enum's descriptor (~0.3 µs); a dict lookup does not.
_NAMES = {code: code.name for code in grpc.StatusCode}
_LEVELS = {level: logging.getLevelName(level) for level in (logging.INFO, logging.WARNING)}
#: Escaped forms of methods and peers, which repeat (bounded: peers come and go).
_ESCAPED_MAX = 10_000

#: --access-log values other than "all" (config.ACCESS_LOGS lists them all).
ACCESS_LOG_ERRORS: Final = "errors"
ACCESS_LOG_OFF: Final = "off"


class AccessLog:
    """Writes the access-log line of each call; with `errors_only`, calls that ended OK are
    skipped (a deployment that wants volume without a line per call)."""

    __slots__ = ("_errors_only", "_escaped", "_log", "_name", "_parts")

    def __init__(self, logger: logging.Logger | None = None, *, errors_only: bool = False) -> None:
        self._log = logger or logging.getLogger("driver_service.rpc")
        self._name = logs.json_string(self._log.name)[1:-1]
        self._errors_only = errors_only
        self._escaped: dict[str, str] = {}
        #: Per method, the line's fixed text around the status name and around the peer.
        self._parts: dict[str, tuple[str, str]] = {}

    def _json(self, text: str) -> str:
        """`text` as a JSON string literal, remembered."""
        found = self._escaped.get(text)
        if found is None:
            if len(self._escaped) >= _ESCAPED_MAX:
                self._escaped.clear()
            found = self._escaped[text] = logs.json_string(text)
        return found

    def _line(self, entry: tuple[Any, ...]) -> str:
        """The line JsonFormatter would write for the call's record, built in one step from
        a queued entry (record's fields). Request ids are JSON-safe by construction
        (validated or generated)."""
        _, at, level, method, peer, duration_s, code, request_id, m_in, m_out, static = entry
        parts = self._parts.get(method)
        if parts is None:
            if len(self._parts) >= _ESCAPED_MAX:
                self._parts.clear()
            method_json = self._json(method)
            parts = self._parts[method] = (
                f'"logger":"{self._name}","message":"rpc {method_json[1:-1]} ',
                f'","method":{method_json},"peer":',
            )
        name = "OK" if code is _OK else _NAMES[code]  # a StatusCode hashes in Python
        return (
            f'{{"time":"{logs.iso_millis(at)}","level":"{_LEVELS[level]}",{parts[0]}{name}",'
            f'"request_id":"{request_id}{parts[1]}{self._json(peer)},'
            f'"duration_ms":{duration_s * 1000:.3f},"code":"{name}",'
            f'"messages_in":{m_in},"messages_out":{m_out}{static}}}\n'
        )

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
        if code is _OK:  # no lookup: a StatusCode hashes in Python (Enum.__hash__)
            if self._errors_only:
                return
            level = logging.INFO
        else:
            level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        log = self._log
        if not log.isEnabledFor(level):
            return
        sink = logs.fast_json_sink(log, level)
        if sink is not None:
            # Only the fields now; the line is built when the handler writes its queue.
            sink.write_line(
                (
                    self._line,
                    time.time(),
                    level,
                    method,
                    peer,
                    duration_s,
                    code,
                    request_id,
                    messages_in,
                    messages_out,
                    sink.static_json,
                )
            )
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
        log.log(level, "%s", message, extra=fields)
