"""Group commit for location updates: many streams, one transaction per round, acks after commit.

Every accepted update is appended to the open batch and the caller gets that batch's
future. A single writer task commits whatever has accumulated while the previous commit
ran, so batch size follows load: one update per commit when traffic trickles (after a
1 ms linger), thousands per commit under a flood (no transaction per update).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from driver_service.domain import Location, StoreUnavailable
from driver_service.ports import DriverRepository, LocationBus

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 50_000
#: A commit smaller than this waits LINGER_S for more updates first: a stream of single
#: updates (UploadLocations) otherwise commits a handful at a time, and the per-commit cost
#: (thread hop, transaction, fsync) then dominates. Larger batches go at once.
LINGER_BELOW = 256
LINGER_S = 0.001


class LocationWriter:
    """Batches updates from all streams into durable commits, then publishes them live."""

    def __init__(
        self,
        repository: DriverRepository,
        bus: LocationBus,
        max_pending: int = DEFAULT_MAX_PENDING,
        linger_s: float = LINGER_S,
    ) -> None:
        self._repository = repository
        self._linger_s = linger_s
        self._bus = bus
        self._max_pending = max_pending
        self._batch: list[Location] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="location-writer")

    def submit(self, location: Location) -> asyncio.Future[None]:
        """Queue one update; the returned future resolves once it is durably committed
        (and is shared by every update of the same commit)."""
        done = self._open_batch()
        self._batch.append(location)
        self._queued()
        return done

    def submit_many(self, locations: Sequence[Location]) -> asyncio.Future[None]:
        """Queue many updates at once (one batched message); like submit, the future
        resolves once all of them are durably committed. The batch may pass max_pending by
        one message's worth: callers wait for room before each message, not each update."""
        done = self._open_batch()
        self._batch.extend(locations)
        self._queued()
        return done

    def _open_batch(self) -> asyncio.Future[None]:
        """The open batch's commit future (created with the batch)."""
        if self._closed:
            raise StoreUnavailable("the server is shutting down and no longer accepts updates")
        done = self._batch_done
        if done is None:
            done = self._batch_done = asyncio.get_running_loop().create_future()
        return done

    def _queued(self) -> None:
        """Wake the writer; close the door while the batch is full."""
        self._idle.clear()
        self._work.set()
        if len(self._batch) >= self._max_pending:
            self._room.clear()

    async def wait_for_room(self) -> None:
        """Backpressure: wait while the pending batch is full."""
        if not self._room.is_set():
            await self._room.wait()

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            if self._linger_s and 0 < len(self._batch) < LINGER_BELOW and not self._closed:
                await asyncio.sleep(self._linger_s)
            self._work.clear()
            batch, done = self._batch, self._batch_done
            if not batch or done is None:
                self._idle.set()
                continue
            self._batch, self._batch_done = [], None
            self._room.set()
            await self._commit(batch, done)
            if not self._batch:
                self._idle.set()

    async def _commit(self, batch: Sequence[Location], done: asyncio.Future[None]) -> None:
        try:
            advanced = await self._repository.record_locations(batch)
        except Exception:
            log.exception("committing %d location updates failed", len(batch))
            done.set_exception(StoreUnavailable("storing location updates failed"))
            done.exception()  # retrieved here: not every submitter awaits its future
            return
        done.set_result(None)
        if advanced:
            try:
                await self._bus.publish(advanced)
            except Exception:
                log.exception("publishing %d live locations failed", len(advanced))

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Refuse new updates, commit what is pending, stop the writer."""
        self._closed = True
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
