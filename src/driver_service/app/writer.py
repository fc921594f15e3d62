"""Group commit for location updates: many streams, one transaction per round, acks after commit.

Every accepted update is appended to the open batch and the caller gets that batch's
`Commit`. A single writer task commits whatever has accumulated while the previous commit
ran, so batch size follows load: one update per commit when traffic trickles (after a
1 ms linger, which goes on up to 4 ms while updates keep arriving), thousands per commit
under a flood (no transaction per update).

A `Commit` is shared by every stream whose updates went into it, so a caller never awaits
its future directly: `Commit.wait()` shields it, and a caller that is cancelled (a phone
that hangs up, a deadline) stops waiting without touching what the others wait for. Once it
succeeded, `Commit.conflicts` names the updates the store refused (a different fix for a
driver and timestamp already stored): each stream subtracts its own from what it counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Sequence

from driver_service.domain import Location, StoreUnavailable
from driver_service.ports import DriverRepository, LocationBus
from driver_service.resilience.failure_log import FailureLog
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 50_000
#: A commit smaller than this waits LINGER_S for more updates first: a stream of single
#: updates (UploadLocations) otherwise commits a handful at a time, and the per-commit cost
#: (thread hop, transaction, fsync) then dominates. Larger batches go at once.
LINGER_BELOW = 256
LINGER_S = 0.001
#: While updates keep arriving during a linger, it goes on, up to this many LINGER_S in all:
#: a flood of single updates then commits a few milliseconds' worth at a time (a commit costs
#: ~0.3M instructions and an fsync on SQLite, ~6 updates' worth of work, whatever its size),
#: while a trickle (nothing new within one LINGER_S) still commits after one.
LINGER_STEPS = 4


class Commit:
    """The outcome of one group commit, shared by every update that went into it.

    Await it (or `wait()`) to learn that its updates are durable; StoreUnavailable if the
    commit failed. Waiting is shielded: cancelling a waiter cancels only that waiter.
    """

    __slots__ = ("_future", "conflicts")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()
        #: The updates of this commit the store refused as conflicting duplicates (set
        #: before the commit succeeds; empty unless there were any).
        self.conflicts: frozenset[Location] = frozenset()

    async def wait(self) -> None:
        await asyncio.shield(self._future)

    def __await__(self) -> Generator[object, None, None]:
        return self.wait().__await__()

    def done(self) -> bool:
        return self._future.done()

    def succeeded(self) -> bool:
        """Whether the commit is done and its updates are durable."""
        future = self._future
        return future.done() and future.exception() is None

    def _resolve(
        self, error: BaseException | None = None, conflicts: Sequence[Location] = ()
    ) -> None:
        """Settle the outcome once (later calls are ignored: the writer must never die of it)."""
        future = self._future
        if future.done():
            return
        if error is None:
            if conflicts:
                self.conflicts = frozenset(conflicts)
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved here: not every submitter waits for its commit


class LocationWriter:
    """Batches updates from all streams into durable commits, then publishes them live.

    Its task runs under the supervisor as a fatal task: if it ever ends unexpectedly, every
    update waiting in it fails with StoreUnavailable at once (callers resend), and the server
    turns NOT_SERVING and exits for the orchestrator to restart it.
    """

    def __init__(
        self,
        repository: DriverRepository,
        bus: LocationBus,
        max_pending: int = DEFAULT_MAX_PENDING,
        linger_s: float = LINGER_S,
        supervisor: TaskSupervisor | None = None,
        timer: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._repository = repository
        self._timer = timer
        self._sleep = sleep
        self._linger_s = linger_s
        self._bus = bus
        self._max_pending = max_pending
        self._supervisor = supervisor or TaskSupervisor()
        self._batch: list[Location] = []
        self._batch_done: Commit | None = None
        #: The batch being committed now (failed at once if the writer dies mid-commit).
        self._committing: Commit | None = None
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        #: Whether the pending batch is full (`_room` clear): wait with `wait_for_room` before
        #: submitting more. A plain attribute, read for every update of a stream (a property
        #: over `_room.is_set()` cost ~1.8k instructions an update).
        self.full = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: Supervised | None = None
        self._closed = False
        #: A full disk or a store that is away fails every commit: no traceback per commit.
        self._failures = FailureLog(log, "committing location updates")
        #: Seconds spent in store commits that ended (failed or not; one timer pair a
        #: commit, not an update), and when the one in the store now began.
        self._busy_done_s = 0.0
        self._commit_started: float | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = self._supervisor.start(
                "location-writer", self._run, Policy.FATAL, on_exit=self._fail_pending
            )

    @property
    def busy_s(self) -> float:
        """Seconds this writer has spent in store commits, the one in the store now included
        (a commit stalled for seconds is busy all along, not idle until it ends): background
        work that shares the store (history retention's pacer) reads it for how busy
        ingestion kept the store since it last looked."""
        started = self._commit_started
        return self._busy_done_s + (0.0 if started is None else self._timer() - started)

    @property
    def running(self) -> bool:
        """Whether the writer task is alive (health must not say SERVING otherwise)."""
        return self._task is not None and self._task.alive

    @property
    def failing(self) -> bool:
        """Whether the last commit failed and none has succeeded since."""
        return self._failures.failing

    def failed_within(self, seconds: float) -> bool:
        """Whether a commit failed in the last `seconds` (a write probe may succeed while
        full-size commits still fail: health waits this long after one before trusting it)."""
        return self.failing and time.monotonic() - self._failures.last_failure_at < seconds

    def commit_succeeded_elsewhere(self) -> None:
        """A write probe of the store succeeded (health): commits are expected to work again."""
        self._failures.succeeded()

    def submit(self, location: Location) -> Commit:
        """Queue one update; the returned commit resolves once it is durably stored (and is
        shared by every update of the same commit)."""
        done = self._batch_done
        if done is None or self._closed:
            done = self._open_batch()
        batch = self._batch
        if not batch:
            # The writer sleeps only with no batch to take: wake it for the first update.
            # Until it takes the batch it stays awake, so the rest are appends.
            self._idle.clear()
            self._work.set()
        batch.append(location)
        if len(batch) >= self._max_pending:
            self._close_door()
        return done

    def submit_many(self, locations: Sequence[Location]) -> Commit:
        """Queue many updates at once (one batched message); like submit, the commit
        resolves once all of them are durably committed. The batch may pass max_pending by
        one message's worth: callers wait for room before each message, not each update."""
        done = self._open_batch()
        self._batch.extend(locations)
        self._queued()
        return done

    def _open_batch(self) -> Commit:
        """The open batch's commit (created with the batch)."""
        if self._closed:
            raise StoreUnavailable("the server is shutting down and no longer accepts updates")
        done = self._batch_done
        if done is None:
            if self._task is not None and not self._task.alive:
                raise StoreUnavailable("the server cannot store updates now; resend later")
            done = self._batch_done = Commit(asyncio.get_running_loop())
        return done

    def _queued(self) -> None:
        """Wake the writer; close the door while the batch is full."""
        self._idle.clear()
        self._work.set()
        if len(self._batch) >= self._max_pending:
            self._close_door()

    def _close_door(self) -> None:
        self._room.clear()
        self.full = True

    def _open_door(self) -> None:
        self._room.set()
        self.full = False

    async def wait_for_room(self) -> None:
        """Backpressure: wait while the pending batch is full."""
        if not self._room.is_set():
            await self._room.wait()

    @property
    def queued(self) -> int:
        """Updates waiting for the next commit (not yet handed to the store)."""
        return len(self._batch)

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            await self._linger()
            self._work.clear()
            batch, done = self._batch, self._batch_done
            if not batch or done is None:
                self._idle.set()
                continue
            self._batch, self._batch_done = [], None
            self._open_door()
            self._committing = done
            await self._commit(batch, done)
            self._committing = None
            if not self._batch:
                self._idle.set()

    async def _linger(self) -> None:
        """Let a small batch grow: one LINGER_S, then more while updates keep coming."""
        if not self._linger_s:
            return
        for _ in range(LINGER_STEPS):
            size = len(self._batch)
            if not 0 < size < LINGER_BELOW or self._closed:
                return
            await self._sleep(self._linger_s)
            if len(self._batch) == size:  # nothing new: a trickle, commit now
                return

    async def _commit(self, batch: Sequence[Location], done: Commit) -> None:
        started = self._commit_started = self._timer()
        try:
            advanced = await self._repository.record_locations(batch)
        except Exception as exc:  # noqa: BLE001 - any store failure fails this commit only
            self._failures.failed(exc, f"{len(batch)} updates")
            done._resolve(StoreUnavailable("storing location updates failed"))
            return
        finally:
            self._busy_done_s += self._timer() - started
            self._commit_started = None
        self._failures.succeeded()
        done._resolve(conflicts=advanced.conflicts)
        if advanced:  # refused conflicts never advance, so they are never published
            try:
                await self._bus.publish(advanced)
            except Exception:
                log.exception("publishing %d live locations failed", len(advanced))

    def _fail_pending(self) -> None:
        """The writer ended: fail what waits in it so no caller hangs until its deadline."""
        error = StoreUnavailable("the server cannot store updates now; resend later")
        for commit in (self._committing, self._batch_done):
            if commit is not None:
                commit._resolve(error)
        self._committing = self._batch_done = None
        self._batch = []
        self._open_door()
        self._idle.set()

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Refuse new updates, commit what is pending, stop the writer."""
        self._closed = True
        if self.running:
            await self.flush()
        if self._task is not None:
            await self._task.stop()
            self._task = None
        self._fail_pending()
