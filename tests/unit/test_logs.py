"""JSON log lines: the access log's fast path writes the same line the logging module would,
valid JSON whatever the strings hold, and steps aside for any other logging setup."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest

from driver_service.interceptors import AccessLog
from driver_service.observability.context import CALL, new_scope
from driver_service.observability.logs import (
    JsonFormatter,
    JsonLinesHandler,
    configure_logging,
    fast_json_sink,
    iso_millis,
)

HOSTILE = 'peer "quoted" \\ back\nnew line \x00 nul \u00e9t\u00e9 \U0001f697'


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("test.logs.fast")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    log.handlers.clear()
    log.filters.clear()
    log.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_fast_line_matches_the_formatter_line(logger: logging.Logger) -> None:
    stream = io.StringIO()
    handler = JsonLinesHandler(stream, {"worker": 3})
    logger.addHandler(handler)
    fields: dict[str, str | int | float] = {
        "request_id": "abc",
        "method": "/driver.v1.DriverService/GetDriver",
        "peer": HOSTILE,
        "duration_ms": 0.125,
        "messages_in": 1,
    }
    handler.write_fields(logging.WARNING, logger.name, f"rpc to {HOSTILE}", fields)
    logger.warning("rpc to %s", HOSTILE, extra=fields)
    fast, slow = lines(stream)
    assert fast.pop("time")
    assert slow.pop("time")
    assert fast == slow
    assert fast["peer"] == HOSTILE
    assert fast["worker"] == 3
    assert fast["level"] == "WARNING"


def test_timestamps_are_iso_utc_with_milliseconds() -> None:
    for created in (0.0, 1_764_000_000.0, 1_764_000_000.999, 1_764_000_001.0005):
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert iso_millis(created) == expected


def test_fast_sink_only_for_a_lone_unfiltered_json_handler(logger: logging.Logger) -> None:
    logger.handlers.clear()  # pytest's capture handlers, if it put any here
    assert fast_json_sink(logger, logging.INFO) is None  # no handler at all
    handler = JsonLinesHandler(io.StringIO())
    logger.addHandler(handler)
    assert fast_json_sink(logger, logging.INFO) is handler
    handler.setLevel(logging.WARNING)
    assert fast_json_sink(logger, logging.INFO) is None
    assert fast_json_sink(logger, logging.WARNING) is handler
    handler.setLevel(logging.NOTSET)
    logger.addFilter(logging.Filter("other"))
    assert fast_json_sink(logger, logging.INFO) is None
    logger.filters.clear()
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    assert fast_json_sink(logger, logging.INFO) is None


def test_access_log_through_the_service_logging_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO", "json", worker=1)
        access = AccessLog()
        access.record("/svc/M", HOSTILE, 0.0015, grpc.StatusCode.OK, "rid-1", 3, 1, True)
        access.record("/svc/M", "p", 0.1, grpc.StatusCode.INTERNAL, "rid-2", 1, 0, False)
        token = CALL.set(new_scope("outer"))
        logging.getLogger("driver_service.other").info("plain %d", 7)
        CALL.reset(token)
        configure_logging("WARNING", "json")
        AccessLog().record("/svc/M", "p", 0.1, grpc.StatusCode.OK, "rid-3", 1, 1, False)
    finally:
        root.handlers[:], root.level = saved
    ok, fault, plain = lines(stream)
    assert ok["logger"] == "driver_service.rpc"
    assert (ok["level"], ok["code"], ok["peer"], ok["request_id"]) == (
        "INFO",
        "OK",
        HOSTILE,
        "rid-1",
    )
    assert (ok["messages_in"], ok["messages_out"], ok["duration_ms"]) == (3, 1, 1.5)
    assert ok["worker"] == 1
    assert ok["message"] == "rpc /svc/M OK"
    assert (fault["level"], fault["code"]) == ("WARNING", "INTERNAL")
    assert (plain["message"], plain["request_id"], plain["worker"]) == ("plain 7", "outer", 1)


def test_formatter_keeps_exceptions_and_extra_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info(), extra={"driver": "d1"}
        )
    out = json.loads(JsonFormatter().format(record))
    assert out["driver"] == "d1"
    assert "ValueError: boom" in out["exception"]


async def test_queued_lines_go_out_together_and_in_order(
    logger: logging.Logger,
) -> None:
    logger.handlers.clear()
    stream = io.StringIO()
    handler = JsonLinesHandler(stream, flush_interval_s=0.01)
    logger.addHandler(handler)
    access = AccessLog(logger)
    for n in range(3):
        access.record("/svc/M", "p", 0.001, grpc.StatusCode.OK, f"rid-{n}", 1, 1, False)
    await asyncio.sleep(0)
    assert stream.getvalue() == ""  # queued for the flush interval
    logger.info("between")  # a regular record flushes the queue first: order is kept
    access.record("/svc/M", "p", 0.001, grpc.StatusCode.OK, "rid-3", 1, 1, False)
    await asyncio.sleep(0.05)
    found = [line.get("request_id", line["message"]) for line in lines(stream)]
    assert found == ["rid-0", "rid-1", "rid-2", "between", "rid-3"]


async def test_access_lines_keep_their_exact_text(logger: logging.Logger) -> None:
    """Byte for byte, whichever fields repeat (the fixed text is kept per method, status
    and peer): log readers parse these lines."""
    logger.handlers.clear()
    stream = io.StringIO()
    handler = JsonLinesHandler(stream, {"worker": 3})
    logger.addHandler(handler)
    access = AccessLog(logger)
    access.record("/svc/M", "ipv4:10.0.0.1:5", 0.0015, grpc.StatusCode.OK, "r1", 1, 1, False)
    access.record("/svc/M", HOSTILE, 0.25, grpc.StatusCode.NOT_FOUND, "r2", 2, 0, True)
    access.record("/svc/M", "ipv4:10.0.0.1:5", 1.0, grpc.StatusCode.INTERNAL, "r3", 1, 0, False)
    handler.flush()
    found = [line.split('",', 1)[1] for line in stream.getvalue().splitlines()]
    tail = '"method":"/svc/M","peer":'
    assert found == [
        '"level":"INFO","logger":"test.logs.fast","message":"rpc /svc/M OK","request_id":"r1",'
        f'{tail}"ipv4:10.0.0.1:5","duration_ms":1.500,"code":"OK","messages_in":1,'
        '"messages_out":1,"worker":3}',
        '"level":"INFO","logger":"test.logs.fast","message":"rpc /svc/M NOT_FOUND",'
        f'"request_id":"r2",{tail}{json.dumps(HOSTILE)},"duration_ms":250.000,'
        '"code":"NOT_FOUND","messages_in":2,"messages_out":0,"worker":3}',
        '"level":"WARNING","logger":"test.logs.fast","message":"rpc /svc/M INTERNAL",'
        f'"request_id":"r3",{tail}"ipv4:10.0.0.1:5","duration_ms":1000.000,'
        '"code":"INTERNAL","messages_in":1,"messages_out":0,"worker":3}',
    ]


async def test_logging_reconfigured_reaches_the_access_log_at_the_next_queue(
    logger: logging.Logger,
) -> None:
    """The access log keeps the handler it found while that handler's queue is open (50 ms
    at most), not longer."""
    logger.handlers.clear()
    first, second = io.StringIO(), io.StringIO()
    handler = JsonLinesHandler(first)
    logger.addHandler(handler)
    access = AccessLog(logger)
    access.record("/svc/M", "p", 0.001, grpc.StatusCode.OK, "rid-0", 1, 1, False)
    logger.removeHandler(handler)
    logger.addHandler(JsonLinesHandler(second))
    access.record("/svc/M", "p", 0.001, grpc.StatusCode.OK, "rid-1", 1, 1, False)  # queue open
    handler.flush()
    access.record("/svc/M", "p", 0.001, grpc.StatusCode.OK, "rid-2", 1, 1, False)
    logger.handlers[0].flush()
    # rid-1 may go either way (the queue was open); rid-2 came after it was written.
    to_first = [line["request_id"] for line in lines(first)]
    to_second = [line["request_id"] for line in lines(second)]
    assert sorted(to_first + to_second) == ["rid-0", "rid-1", "rid-2"]
    assert to_first[0] == "rid-0"
    assert to_second[-1] == "rid-2"


async def test_access_lines_with_many_messages_keep_their_exact_text(
    logger: logging.Logger,
) -> None:
    """The counts of calls with few messages are text made once; any other counts are
    formatted as they come, the same text."""
    logger.handlers.clear()
    stream = io.StringIO()
    logger.addHandler(handler := JsonLinesHandler(stream))
    access = AccessLog(logger)
    counts = [(0, 0), (1, 1), (7, 0), (8, 1), (0, 12), (1234, 56789)]
    for m_in, m_out in counts:
        access.record("/svc/S", "p", 0.002, grpc.StatusCode.OK, "r", m_in, m_out, True)
    handler.flush()
    tails = [line.split('"messages_in":', 1)[1] for line in stream.getvalue().splitlines()]
    assert tails == [f'{m_in},"messages_out":{m_out}}}' for m_in, m_out in counts]


def test_lines_queued_from_many_threads_are_each_written_once() -> None:
    """Writers queue without the handler's lock while other threads flush: no line is lost
    or written twice, and each writer's lines keep their order."""
    stream = io.StringIO()
    handler = JsonLinesHandler(stream)
    writers, each = 4, 5_000

    def write(n: int) -> None:
        for k in range(each):
            handler.write_line(f"{n} {k}\n")  # outside a loop: may flush at once

    def flush_often() -> None:
        for _ in range(2_000):
            handler.flush()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    threads.append(threading.Thread(target=flush_often))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    handler.flush()
    written = [tuple(map(int, line.split())) for line in stream.getvalue().splitlines()]
    assert len(written) == writers * each
    for n in range(writers):
        assert [k for w, k in written if w == n] == list(range(each))
