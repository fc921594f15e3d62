"""One owner for every long-running background task, so none can die unnoticed.

A task that ends unexpectedly (an exception, or returning when it should run forever) is
logged once with its traceback and counted; then, by its policy, it is started again after
a backoff (`RESTART`: work that can resume, such as sweepers and readers), or the server is
told to stop serving (`FATAL`: work without which the service would lie, such as the
group-commit writer): health turns NOT_SERVING and the process exits non-zero so that the
orchestrator restarts it. Which policy each task has is listed in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: Restart backoff: doubles from the first to the cap; a task that ran this long without
#: failing starts again from the first.
RESTART_FIRST_S = 0.1
RESTART_CAP_S = 5.0
RESTART_RESET_AFTER_S = 30.0


class Policy(enum.Enum):
    RESTART = "restart"
    FATAL = "fatal"


class TaskEnded(Exception):
    """A supervised task returned although it should run until stopped."""


class Supervised:
    """One supervised task: alive until stopped or, for a fatal one, until it fails."""

    __slots__ = ("_task", "alive", "name", "policy", "stopping")

    def __init__(self, name: str, policy: Policy) -> None:
        self.name = name
        self.policy = policy
        self.alive = True
        self.stopping = False
        self._task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Cancel the task and wait for it to end (an intended stop: neither restarted nor
        reported)."""
        self.stopping = True
        self.alive = False
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class TaskSupervisor:
    """Starts background tasks and watches them; see the module docstring for policies."""

    def __init__(
        self,
        *,
        on_fatal: Callable[[str, BaseException], None] | None = None,
        count_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.on_fatal = on_fatal
        self.count_failure = count_failure
        self._tasks: set[Supervised] = set()
        #: The first fatal task that failed, if any (health reads it).
        self.fatal_failure: str | None = None

    def start(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        policy: Policy,
        *,
        on_exit: Callable[[], None] | None = None,
    ) -> Supervised:
        """Run `run()` under supervision; `on_exit` is called after each unexpected end
        (before a restart), to release whatever waits on the task."""
        handle = Supervised(name, policy)
        task = asyncio.get_running_loop().create_task(self._keep(handle, run, on_exit), name=name)
        handle._task = task
        self._tasks.add(handle)
        task.add_done_callback(lambda _task: self._tasks.discard(handle))
        return handle

    @property
    def running(self) -> list[str]:
        """Names of the tasks alive now."""
        return sorted(handle.name for handle in self._tasks if handle.alive)

    async def _keep(
        self,
        handle: Supervised,
        run: Callable[[], Awaitable[None]],
        on_exit: Callable[[], None] | None,
    ) -> None:
        delay = RESTART_FIRST_S
        while not handle.stopping:
            started = time.monotonic()
            try:
                await run()
                error: BaseException = TaskEnded(f"{handle.name} returned")
            except asyncio.CancelledError:
                handle.alive = False  # the loop itself is ending (not a failure of the task)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is reported, never lost
                error = exc
            if handle.stopping:
                return
            log.error(
                "background task %s ended unexpectedly (%s)",
                handle.name,
                "restarting" if handle.policy is Policy.RESTART else "fatal: stopping service",
                exc_info=error,
            )
            if self.count_failure is not None:
                self.count_failure(handle.name)
            if on_exit is not None:
                on_exit()
            if handle.policy is Policy.FATAL:
                handle.alive = False
                if self.fatal_failure is None:
                    self.fatal_failure = handle.name
                if self.on_fatal is not None:
                    self.on_fatal(handle.name, error)
                return
            if time.monotonic() - started > RESTART_RESET_AFTER_S:
                delay = RESTART_FIRST_S
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_CAP_S)

    async def close(self) -> None:
        """Stop every task (at shutdown, after their owners closed what they own)."""
        for handle in list(self._tasks):
            await handle.stop()
        self._tasks.clear()
