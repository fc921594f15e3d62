"""Logging setup: JSON lines for machines (default off a terminal), readable text on one.

The JSON handler can also write a line from a dict of fields without building a LogRecord:
the access log writes one line per call, and the logging module's generic path (LogRecord,
filters, formatter) costs about as much CPU as a whole GetDriver.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, TextIO

from driver_service.observability.context import CALL, SCOPE_REQUEST_ID, RequestIdFilter

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
#: Strings that need no JSON escaping: printable ASCII without quote or backslash.
_PLAIN = re.compile(r"[ !#-\[\]-~]*\Z")


#: ".000+00:00" to ".999+00:00": a table lookup instead of formatting an int (~2 k
#: instructions), paid once per millisecond (BENCHMARKS.md, issue 20).
_MILLIS = tuple(f".{fraction:03d}+00:00" for fraction in range(1000))


class _SecondCache:
    """ISO-8601 UTC timestamps with milliseconds; the part down to the second is formatted
    once per second (strftime is the slow part), the whole string once per millisecond (a
    busy server logs several lines in each)."""

    __slots__ = ("millisecond", "prefix", "second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""
        self.millisecond = -1
        self.text = ""

    def iso(self, created: float) -> str:
        millisecond = int(created * 1000)
        if millisecond == self.millisecond:
            return self.text
        second = millisecond // 1000
        prefix = self.prefix
        if second != self.second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self.prefix, self.second = prefix, second
        text = prefix + _MILLIS[millisecond - second * 1000]
        # Text before its key: a thread reading between the two sees a miss, never a
        # stale text under a new key (records are formatted on other threads too).
        self.text = text
        self.millisecond = millisecond
        return text


_clock = _SecondCache()

#: `created` (seconds since the epoch) as 2026-11-26T04:40:00.123+00:00 (the cache's bound
#: method itself: a wrapper function would cost a frame on every access-log line).
iso_millis = _clock.iso


def json_string(value: str) -> str:
    """`value` as a JSON string literal; plain ASCII skips the encoder."""
    if _PLAIN.match(value):
        return f'"{value}"'
    return json.dumps(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and any `extra`."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": iso_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or CALL.get()[SCOPE_REQUEST_ID]
        if request_id != "-":
            out["request_id"] = request_id
        out.update(self.static)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes JsonFormatter lines. `write_line` takes a line already built in that shape (the
    access log's fast path); queued lines go out together `flush_interval_s` after the first
    of them (or at once past MAX_PENDING lines), instead of a write system call per call
    served: a crash may lose that long of access lines. Records from `emit` flush the queue
    first, so lines keep their order; so does shutdown (logging.shutdown flushes)."""

    MAX_PENDING = 512

    def __init__(
        self,
        stream: TextIO,
        static: dict[str, Any] | None = None,
        *,
        flush_interval_s: float = 0.05,
    ) -> None:
        super().__init__(stream)
        self.flush_interval_s = flush_interval_s
        self.setFormatter(JsonFormatter(static))
        #: The static fields (worker) as the tail of a JSON object: `,"worker":1`.
        self.static_json = "".join(
            f",{json_string(k)}:{json.dumps(v, default=str)}" for k, v in (static or {}).items()
        )
        #: Lines, and entries (a formatter, then its fields) turned into lines at the flush.
        #: A deque: appending is atomic and the flush takes lines off its front, so a writer
        #: queues without the handler's lock (~0.8 k instructions an access-log line).
        self._pending: deque[str | tuple[Any, ...]] = deque()
        #: Queues written so far: a writer that found this handler while the current queue
        #: was open may skip finding it again until the queue is written (AccessLog).
        self.batch = 0

    def write_line(self, line: str | tuple[Any, ...]) -> None:
        """Queue `line` (one JSON object and its newline), or an entry whose first item
        formats it into one (`entry[0](entry)`), formatted when the queue is written: the
        caller (the access log, once per call) only stores its fields. Outside an event
        loop, write it at once."""
        pending = self._pending
        pending.append(line)
        # Another thread's flush may take the line between these two steps: then 0 (and
        # nothing to schedule); 1, the first of a queue: its flush is this writer's to
        # schedule; more, a flush is scheduled or under way and takes every line queued.
        queued = len(pending)
        if queued == 1:
            try:
                asyncio.get_running_loop().call_later(self.flush_interval_s, self.flush)
            except RuntimeError:
                self.flush()
        elif queued >= self.MAX_PENDING:
            self.flush()

    def write_fields(
        self, level: int, logger: str, message: str, fields: dict[str, str | int | float]
    ) -> None:
        """One line with time, level, logger, message, `fields` and the static fields."""
        parts = [
            f'{{"time":"{iso_millis(time.time())}","level":"{logging.getLevelName(level)}",'
            f'"logger":{json_string(logger)},"message":{json_string(message)}'
        ]
        for key, value in fields.items():
            parts.append(
                f',"{key}":{json_string(value)}' if isinstance(value, str) else f',"{key}":{value}'
            )
        parts.append(self.static_json)
        parts.append("}\n")
        self.write_line("".join(parts))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            pending = self._pending
            if pending:
                self.batch += 1
                lines = []
                take = pending.popleft
                while pending:  # until empty: lines queued meanwhile are written now, too
                    line = take()
                    lines.append(line if isinstance(line, str) else line[0](line))
                self.stream.write("".join(lines))
            super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.flush()
        super().emit(record)


def fast_json_sink(logger: logging.Logger, level: int) -> JsonLinesHandler | None:
    """The one handler a record of `level` from `logger` would reach, if that is a plain
    JsonLinesHandler and no filter is in the way; else None (use the logging module)."""
    if logger.filters or logger.disabled:
        return None
    found: JsonLinesHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None or not isinstance(handler, JsonLinesHandler):
                return None
            if handler.filters or level < handler.level:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def configure_logging(level: str, fmt: str = "auto", worker: int | None = None) -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler: logging.Handler
    if as_json:
        handler = JsonLinesHandler(sys.stderr, {"worker": worker} if worker is not None else {})
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(RequestIdFilter())
        worker_part = f"[w{worker}] " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)-7s {worker_part}%(name)s [%(request_id)s] %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
