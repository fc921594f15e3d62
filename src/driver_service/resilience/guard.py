"""Bounded time and a circuit breaker for one dependency (Redis, PostgreSQL).

A dependency that hangs (SIGSTOP, a partition, a full accept queue) is treated like one that
refuses: every operation gets at most `timeout_s`; the first that fails or runs out of time
marks the dependency down, and from then on request paths skip it at once (no per-call
timeout) while one background probe asks it, every `probe_every_s` with the same bound,
until it answers. Then the recovery hooks run (e.g. drop live keys that missed writes) and
the dependency is used again.

Two ways to bound an operation:
- `bounded()`, an `async with` block under `asyncio.timeout`: cheap (no task), for clients
  whose cleanup after a cancellation does no I/O (redis-py drops the connection at once);
- `call(op)`, the operation in a task of its own that is abandoned (cancelled, its cleanup
  left to finish in the background) once the time is up: for asyncpg, whose rollback and
  cancel request after a cancellation wait for the server again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from driver_service.domain import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PROBE_EVERY_S = 0.2


class DependencyUnavailable(StoreUnavailable):
    """The dependency is down, or did not answer in time; the caller answers UNAVAILABLE or
    falls back to the source of truth."""


class DependencyGuard:
    """Bounds every call to one dependency and skips it while it is known to be down."""

    def __init__(
        self,
        name: str,
        timeout_s: float,
        probe: Callable[[], Awaitable[object]],
        *,
        failures: tuple[type[BaseException], ...],
        probe_every_s: float = DEFAULT_PROBE_EVERY_S,
        message: str = "a dependency is unavailable; retry shortly",
        detach_probe: bool = False,
    ) -> None:
        """`failures`: the exceptions that mean the dependency itself failed (a timeout
        always does); any other exception is the caller's problem and passes through.
        `detach_probe`: run the probe as `call()` runs operations (for asyncpg)."""
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.name = name
        self.timeout_s = timeout_s
        self._probe_op = probe
        self._failures: tuple[type[BaseException], ...] = (TimeoutError, *failures)
        self._probe_every_s = probe_every_s
        self._message = message
        self._detach_probe = detach_probe
        #: Awaited, in order, after the probe succeeds and before the dependency is used
        #: again; one that raises keeps it down (the probe tries again).
        self.on_recover: list[Callable[[], Awaitable[None]]] = []
        self._up = True
        self._down_since = 0.0
        self._prober: asyncio.Task[None] | None = None
        self._closed = False
        #: Times the dependency was marked down (for tests and metrics).
        self.trips = 0

    @property
    def up(self) -> bool:
        """Whether request paths should use the dependency now."""
        return self._up

    def unavailable(self) -> DependencyUnavailable:
        return DependencyUnavailable(self._message)

    # --- bounding ----------------------------------------------------------------------------
    def bounded(self) -> _Bounded:
        """`async with guard.bounded():` runs its block within `timeout_s`; raises
        DependencyUnavailable at once while down, or when the block fails or runs late."""
        return _Bounded(self)

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """`await op()` in a task of its own, abandoned after `timeout_s` (its cleanup then
        finishes in the background); DependencyUnavailable like `bounded()`."""
        if not self._up:
            raise self.unavailable()
        return await self._detached(op)

    async def _detached(self, op: Callable[[], Awaitable[T]]) -> T:
        task = asyncio.ensure_future(op())
        try:
            done, _ = await asyncio.wait((task,), timeout=self.timeout_s)
        except asyncio.CancelledError:
            task.cancel()  # the caller went away: so does its operation
            task.add_done_callback(_retrieve)
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_retrieve)
            self.failed(TimeoutError(f"no answer within {self.timeout_s} s"))
            raise self.unavailable()
        try:
            return task.result()
        except self._failures as exc:
            self.failed(exc)
            raise self.unavailable() from exc

    async def check(self) -> None:
        """Ask the dependency now, bounded, whatever its state (health checks); success
        marks it up (after the recovery hooks), failure down. Raises on failure."""
        if self._detach_probe:
            await self._detached(self._probe_op)
        else:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._probe_op()
            except self._failures as exc:
                self.failed(exc)
                raise self.unavailable() from exc
        if not self._up:
            await self._recover()

    # --- state -------------------------------------------------------------------------------
    def failed(self, exc: BaseException) -> None:
        """Mark the dependency down (it failed or ran out of time) and start the probe."""
        if self._up:
            self._up = False
            self._down_since = time.monotonic()
            self.trips += 1
            log.warning(
                "%s unavailable (%s); skipping it and probing every %.2f s",
                self.name,
                _describe(exc),
                self._probe_every_s,
            )
        if self._prober is None and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to probe from
                self._prober = asyncio.get_running_loop().create_task(
                    self._probe_forever(), name=f"{self.name}-probe"
                )

    async def _recover(self) -> None:
        for hook in self.on_recover:
            await hook()
        if not self._up:  # no await since the last hook: nothing can have slipped in
            self._up = True
            log.warning(
                "%s answers again after %.1f s; using it again",
                self.name,
                time.monotonic() - self._down_since,
            )

    async def _probe_forever(self) -> None:
        """Ask the dependency until it answers and the recovery hooks succeed."""
        try:
            while not self._up and not self._closed:
                await asyncio.sleep(self._probe_every_s)
                try:
                    await self.check()
                except Exception as exc:  # noqa: BLE001 - down for any reason: probe again
                    log.debug("%s probe failed: %s", self.name, _describe(exc))
        finally:
            self._prober = None

    async def close(self) -> None:
        """Stop probing (idempotent)."""
        self._closed = True
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober


class _Bounded:
    """One `async with guard.bounded()` block (an object per use: blocks run concurrently)."""

    __slots__ = ("_guard", "_timeout")

    def __init__(self, guard: DependencyGuard) -> None:
        self._guard = guard
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> None:
        guard = self._guard
        if not guard._up:
            raise guard.unavailable()
        self._timeout = asyncio.timeout(guard.timeout_s)
        await self._timeout.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._timeout is not None
        guard = self._guard
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except guard._failures as raised:
            guard.failed(raised)
            raise guard.unavailable() from raised
        if exc is not None and isinstance(exc, guard._failures):
            guard.failed(exc)
            raise guard.unavailable() from exc


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume an abandoned operation's outcome (asyncio would log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
