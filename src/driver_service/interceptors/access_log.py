"""One structured access-log line per call: method, peer, duration_ms, code, request_id and
messages in and out. Metadata is never logged, so the authorization header cannot leak.

Calls that end OK are logged at INFO, server faults (INTERNAL, UNKNOWN, DATA_LOSS) at
WARNING, the rest (the caller's business) at INFO. When the record would reach only the
service's JSON handler, the line is built in one f-string and queued on the handler (~3 µs
instead of ~35 µs through a LogRecord and the formatter), its message short because the
fields carry everything; any other logging setup (text logs on a terminal, a test's
handler, a user's filters) gets an ordinary LogRecord with a readable message and the same
fields as attributes. The handler found for an OK call is kept while its queue is open
(until written: 50 ms at most), the line's fixed text per method, status and peer, and the
message counts' text of calls with few messages: a line in a new millisecond costs ~11.7 k
instructions to build (~14.1 k with its counts and milliseconds formatted; BENCHMARKS.md,
issue 20).
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


def _counts_text(messages_in: int, messages_out: int) -> str:
    """The line's message counts, from `"messages_in":` on (without its key)."""
    return f'{messages_in},"messages_out":{messages_out}'


#: The counts' text of calls with few messages (every unary call), made once: formatting two
#: ints costs a line ~2 k instructions of its ~14 k (BENCHMARKS.md, issue 20).
_COUNTED = 8
_COUNTS = {
    (m_in, m_out): _counts_text(m_in, m_out)
    for m_in in range(_COUNTED)
    for m_out in range(_COUNTED)
}

#: --access-log values other than "all" (config.ACCESS_LOGS lists them all).
ACCESS_LOG_ERRORS: Final = "errors"
ACCESS_LOG_OFF: Final = "off"


class AccessLog:
    """Writes the access-log line of each call; with `errors_only`, calls that ended OK are
    skipped (a deployment that wants volume without a line per call)."""

    __slots__ = ("_batch", "_build", "_errors_only", "_escaped", "_fixed", "_log", "_name", "_sink")

    def __init__(self, logger: logging.Logger | None = None, *, errors_only: bool = False) -> None:
        self._log = logger or logging.getLogger("driver_service.rpc")
        self._name = logs.json_string(self._log.name)[1:-1]
        self._errors_only = errors_only
        self._escaped: dict[str, str] = {}
        #: Per (method, status name, peer), the line's fixed text between its varying fields.
        self._fixed: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        #: The JSON handler an OK call's line went to, and its queue then (see record).
        self._sink: logs.JsonLinesHandler | None = None
        self._batch = -1
        #: `_line`, bound once: reading `self._line` makes a new bound method every line.
        self._build = self._line

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
        name = "OK" if code is _OK else _NAMES[code]  # a StatusCode hashes in Python
        key = (method, name, peer)
        fixed = self._fixed.get(key)
        if fixed is None:
            if len(self._fixed) >= _ESCAPED_MAX:
                self._fixed.clear()
            method_json = self._json(method)
            fixed = self._fixed[key] = (
                f'","level":"{_LEVELS[level]}","logger":"{self._name}",'
                f'"message":"rpc {method_json[1:-1]} {name}","request_id":"',
                f'","method":{method_json},"peer":{self._json(peer)},"duration_ms":',
                f',"code":"{name}","messages_in":',
            )
        counts = _COUNTS.get((m_in, m_out))
        if counts is None:
            counts = _counts_text(m_in, m_out)
        return (
            f'{{"time":"{logs.iso_millis(at)}{fixed[0]}{request_id}{fixed[1]}'
            f"{duration_s * 1000:.3f}{fixed[2]}{counts}{static}}}\n"
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
        streaming: bool = False,
    ) -> None:
        sink = None
        if code is _OK:  # no lookup: a StatusCode hashes in Python (Enum.__hash__)
            if self._errors_only:
                return
            level = logging.INFO
            # While the handler's queue an earlier OK line joined is open, the level check
            # and the search for the handler stand (until it is written: its flush interval,
            # 50 ms); logging reconfigured meanwhile reaches the access log at the next one.
            kept = self._sink
            if kept is not None and kept.batch == self._batch:
                sink = kept
        else:
            level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        if sink is None:
            log = self._log
            if not log.isEnabledFor(level):
                return
            sink = logs.fast_json_sink(log, level)
            if sink is not None and code is _OK:  # the queue's number before the line
                self._sink, self._batch = sink, sink.batch  # joins: a flush between re-finds
        if sink is not None:
            # Only the fields now; the line is built when the handler writes its queue.
            sink.write_line(
                (
                    self._build,
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
        self._log.log(level, "%s", message, extra=fields)
