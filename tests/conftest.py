"""Fixtures shared by every test tier (private PostgreSQL and Redis servers), and the rule
that a skipped test fails the run: a missing service must never pass silently."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.servers", "tests.redis_server"]

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"{len(_skipped)} test(s) skipped; skips fail this suite: {', '.join(_skipped)}",
            red=True,
        )
