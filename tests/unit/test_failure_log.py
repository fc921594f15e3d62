"""FailureLog: a failure repeated thousands of times is one traceback, then a line per
interval with a count, then one line when it works again."""

from __future__ import annotations

import logging

import pytest

from driver_service.resilience.failure_log import FailureLog


def test_a_flood_of_failures_logs_one_traceback_then_counts_then_recovery(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("driver_service.resilience.failure_log.time.monotonic", lambda: now[0])
    failures = FailureLog(logging.getLogger("t"), "committing things", interval_s=10)
    with caplog.at_level(logging.INFO, "t"):
        for i in range(2500):  # 45 s of failures, 2,500 of them
            now[0] = 100.0 + i * 0.018
            failures.failed(OSError("disk full"), "4 updates")
        assert failures.failing
        failures.succeeded()
        failures.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "committing things failed (4 updates)"
    assert caplog.records[0].exc_info is not None
    assert all(r.exc_info is None for r in caplog.records[1:])
    assert len(lines) == 1 + 4 + 1, lines  # first, one per 10 s over 45 s, recovery
    assert "still failing: " in lines[1]
    assert lines[-1] == "committing things succeeds again after 2500 failed"
    assert not failures.failing
