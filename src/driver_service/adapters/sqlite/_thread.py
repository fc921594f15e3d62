"""The one thread that owns a SQLite connection: functions run in order, each outcome handed
to the asyncio future its caller awaits."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class StoreThread:
    """Runs functions one at a time, in submission order, on a thread of its own.

    What `loop.run_in_executor` on a one-worker ThreadPoolExecutor did, without its
    machinery: a round trip cost ~121k instructions there (concurrent.futures' Future and
    its condition variable, the pool's idle semaphore, `asyncio.wrap_future`'s callbacks:
    Python, every group commit), here one queue put and get and one `call_soon_threadsafe`.

    A function whose caller stopped waiting (cancelled) still runs, as one already running
    did before: each is a whole store operation (a transaction commits entirely or not at
    all) and its outcome is dropped. The thread is a daemon: `shutdown` (the store's
    `close`) runs what is queued and joins it; a process that exits without closing the
    store leaves at most an uncommitted transaction, which SQLite rolls back.
    """

    def __init__(self, name: str) -> None:
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `fn`; the returned future (of the running loop) resolves with its result or
        exception."""
        if self._stopped:
            raise RuntimeError("the store's thread is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, future, loop))
        return future

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            _run(*job)
            del job  # hold nothing of a finished job while waiting for the next

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then end the thread; `wait`: until it has ended."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)
        if wait:
            self._thread.join()


def _run(
    fn: Callable[[], Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
) -> None:
    """One job on the store's thread; its outcome goes to the loop."""
    settle: Callable[[asyncio.Future[Any], Any], None]
    try:
        outcome = fn()
    except BaseException as error:  # noqa: BLE001 - handed to the waiter, as an executor does
        settle, outcome = _fail, error
    else:
        settle = _succeed
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle, future, outcome)


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # cancelled: its caller stopped waiting
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: Any) -> None:
    if not future.done():
        future.set_exception(error)
