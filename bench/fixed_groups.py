"""`driver-service serve` with commit groups of a fixed size and no periodic work: for
counting a whole server's instructions per update under callgrind (bench/zones.py
`--serve --instructions --group N`).

Why. Under valgrind a server runs ~50x slower, but the interpreter's GIL switch interval
(5 ms) and the writer's linger (1 ms) are wall-clock times, so the writer thread gets its
turn after ~50x less work and commits far smaller groups than at full speed (driving with
10,000 zones: ~6 updates a commit under valgrind, ~71 at full speed). Per-commit costs (the
transaction, `locate_many`'s few vectorised numpy/GEOS calls) are then spread over fewer
updates, and by an amount that follows the machine's timing. Periodic work (the health
probe, a write transaction every second; the offline sweep; retention) is counted for as
long as the window is open, which is longer with zones. Both make the count depend on
timing; this wrapper removes both, so the count depends on the updates alone.

How. Bench-side patches, before the CLI runs `serve`:

- `LocationWriter.submit` closes the open batch at GROUP updates (the next update opens a
  new one, with its own commit), and `_run` commits closed batches in order, or the open
  one once it has not grown for IDLE_S seconds (the tail of a stream, a single first
  update), instead of after its linger. `commits` and `updates` go to stderr at exit.
- Periodic tasks (`PERIODIC`) are started as tasks that only wait.

    python -m bench.fixed_groups GROUP serve [serve options]
"""

from __future__ import annotations

import asyncio
import atexit
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from driver_service.app import writer as writer_module
from driver_service.cli import main as cli_main
from driver_service.resilience import supervision

#: Supervised tasks that run on a timer, not on updates: parked for the count.
PERIODIC = frozenset(
    {
        "health-monitor",
        "offline-sweeper",
        "history-retention",
        "event-retention",
        "dispatch-sweeper",
    }
)
#: A batch that has not grown for this long is committed although smaller than GROUP.
IDLE_S = 2.0

_counts = {"commits": 0, "updates": 0}


def _patch(group: int) -> None:
    writer_cls: Any = writer_module.LocationWriter
    submit = writer_cls.submit

    def grouped_submit(self: Any, location: Any) -> Any:
        done = submit(self, location)
        if len(self._batch) >= group:  # closed: the next update opens a new batch
            _ready(self).append((self._batch, done))
            self._batch, self._batch_done = [], None
            self._work.set()
        return done

    async def grouped_run(self: Any) -> None:
        ready = _ready(self)
        while True:
            if not ready and not self._batch:
                await self._work.wait()
            while not ready and not self._closed:
                before = len(self._batch)
                self._work.clear()
                try:
                    async with asyncio.timeout(IDLE_S):
                        await self._work.wait()
                except TimeoutError:
                    if len(self._batch) == before:
                        break
            self._work.clear()
            if ready:
                batch, done = ready.popleft()
            elif self._batch and self._batch_done is not None:
                batch, done = self._batch, self._batch_done
                self._batch, self._batch_done = [], None
            else:
                self._idle.set()
                continue
            _counts["commits"] += 1
            _counts["updates"] += len(batch)
            # (batches never reach max_pending here: room stays open)
            self._committing = done
            await self._commit(batch, done)
            self._committing = None
            if not (self._batch or ready):
                self._idle.set()

    writer_cls.submit = grouped_submit
    writer_cls._run = grouped_run

    start = supervision.TaskSupervisor.start

    def start_unless_periodic(
        self: supervision.TaskSupervisor,
        name: str,
        run: Callable[[], Awaitable[None]],
        policy: supervision.Policy,
        **kwargs: Any,
    ) -> supervision.Supervised:
        if name in PERIODIC:
            run = _park
        return start(self, name, run, policy, **kwargs)

    supervision.TaskSupervisor.start = start_unless_periodic  # type: ignore[method-assign]


async def _park() -> None:
    """A periodic task's stand-in: waits until it is cancelled."""
    await asyncio.Event().wait()


def _ready(writer: Any) -> deque[tuple[list[Any], Any]]:
    """The writer's closed batches of GROUP updates, oldest first."""
    ready: deque[tuple[list[Any], Any]] | None = writer.__dict__.get("_bench_ready")
    if ready is None:
        ready = writer.__dict__["_bench_ready"] = deque()
    return ready


def _report() -> None:
    print(
        f"fixed_groups: commits {_counts['commits']} updates {_counts['updates']}", file=sys.stderr
    )


def main() -> int:
    group = int(sys.argv[1])
    _patch(group)
    atexit.register(_report)
    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
