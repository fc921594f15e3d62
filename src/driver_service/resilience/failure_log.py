"""Logging for operations that fail over and over while a dependency or the disk is away.

The first failure is logged with its traceback; then one line per interval with how many
failed since; then one line when the operation succeeds again. A full disk or a store that
is away must not turn the log into thousands of identical tracebacks (it once wrote 2,492 in
45 s), while an operator still sees when it started, that it goes on, and when it ended.
"""

from __future__ import annotations

import logging
import time

#: While failures go on, one log line per this many seconds says how many failed.
DEFAULT_INTERVAL_S = 10.0


class FailureLog:
    """Rate-limited reports of one repeated operation (`what`: "committing location
    updates", "reading drivers", ...). Not thread-safe: use it from the event loop."""

    __slots__ = (
        "_failed",
        "_interval_s",
        "_level",
        "_log",
        "_next_report",
        "_unreported",
        "last_failure_at",
        "what",
    )

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        level: int = logging.ERROR,
    ) -> None:
        self._log = log
        self.what = what
        self._interval_s = interval_s
        self._level = level
        self._failed = 0
        self._unreported = 0
        self._next_report = 0.0
        #: time.monotonic() of the latest failure (0.0 before any).
        self.last_failure_at = 0.0

    @property
    def failing(self) -> bool:
        """Whether the latest outcome was a failure."""
        return self._failed > 0

    def failed(self, error: BaseException, detail: str = "") -> None:
        """Count one failure; log it if it is the first, or if an interval has passed."""
        now = self.last_failure_at = time.monotonic()
        self._failed += 1
        self._unreported += 1
        suffix = f" ({detail})" if detail else ""
        if self._failed == 1:
            self._log.log(self._level, "%s failed%s", self.what, suffix, exc_info=error)
        elif now >= self._next_report:
            self._log.log(
                self._level,
                "%s still failing: %d failed in the last %.0f s (latest: %r)",
                self.what,
                self._unreported,
                self._interval_s,
                error,
            )
        else:
            return
        self._unreported = 0
        self._next_report = now + self._interval_s

    def succeeded(self) -> None:
        """Record a success; after failures, say once that it works again."""
        if self._failed:
            self._log.warning("%s succeeds again after %d failed", self.what, self._failed)
            self._failed = self._unreported = 0
