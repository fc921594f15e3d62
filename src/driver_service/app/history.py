"""Location history, the application service: trails (thinned, capped), trips, stops and
their summary streamed from the store's pages through domain/trips, retention and erasure.
Plain async code over the HistoryStore port; no RPC library."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from driver_service.app.pacing import DEFAULT_SHARE, Pacer
from driver_service.domain import InvalidInput, Location, validate_driver_id
from driver_service.domain.trail import TrailThinner, thin_trail, validate_thinning
from driver_service.domain.trips import (
    DEFAULT_THRESHOLDS,
    Summary,
    TripDetector,
    TripsAndStops,
    TripThresholds,
    summarize,
)
from driver_service.ports import Forgotten, HistoryRow, HistoryStats, HistoryStore
from driver_service.resilience.failure_log import FailureLog

log = logging.getLogger(__name__)

#: A page's item: a domain Location, or a plain row for the trail's fast path.
_Page = TypeVar("_Page", Location, HistoryRow)

_NS = 1_000_000_000
#: The longest range one request may ask for: a month of 1 Hz fixes is ~2.7 M per driver,
#: what one trip report or a thinned trail may reasonably walk through.
MAX_SPAN_NS = 31 * 86_400 * _NS
#: Points per TrailChunk: ~43 bytes each on the wire, so a chunk stays under the server's
#: default 64 KiB message limit.
TRAIL_CHUNK_POINTS = 1000
#: How often retention runs (and partitions are made ahead, and the size figures refresh:
#: at most this often, also while a long backlog drains).
RETENTION_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing one driver removed, everywhere."""

    driver_id: str
    history_fixes: int
    driver_records: int
    queued_commands: int
    live_entries: int
    tracker_states: int = 0
    events: int = 0


#: Removes one driver's data from a store beside the durable one (live state, spatial index,
#: queued commands); returns how many entries it removed.
Forgetter = Callable[[str], Awaitable[int]]


class LocationHistory:
    """Reads and maintains history. `retention_s` 0 keeps it forever; otherwise reads are
    clamped to the window (a fix older than it is never answered, even before the store
    has physically removed it) and `run_retention` expires it in small steps, paced by
    `pacer` (default: at most 5 % of the time, see app/pacing.py)."""

    def __init__(
        self,
        store: HistoryStore,
        *,
        retention_s: float = 0.0,
        clock_ns: Callable[[], int] = time.time_ns,
        forget_commands: Forgetter | None = None,
        forget_live: Sequence[Forgetter] = (),
        pacer: Pacer | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.retention_ns = int(retention_s * _NS)
        self._clock_ns = clock_ns
        self._forget_commands = forget_commands
        self._forget_live = tuple(forget_live)
        #: The store's size figures as of the last refresh (metrics read these).
        self.stats = HistoryStats(0, 0, None)
        #: Fixes removed by retention since start (the metrics' counter).
        self.expired_total = 0
        self.pacer = pacer if pacer is not None else Pacer(DEFAULT_SHARE)
        self._monotonic = monotonic
        #: When storage was last made ahead and the figures refreshed (monotonic seconds).
        self._maintained_at: float | None = None
        self._failures = FailureLog(log, "history retention", level=logging.WARNING)

    # --- ranges ----------------------------------------------------------------------------
    def window(self, driver_id: str, since_ns: int, until_ns: int) -> tuple[int, int]:
        """The range to read: checked, then clamped to the retention window."""
        validate_driver_id(driver_id)
        if since_ns <= 0 or until_ns <= 0:
            raise InvalidInput(
                "since and until are both required (since inclusive, until exclusive)"
            )
        if until_ns <= since_ns:
            raise InvalidInput(
                "until must be after since (the range is [since, until)); swap them or widen it"
            )
        if until_ns - since_ns > MAX_SPAN_NS:
            raise InvalidInput(
                f"the range spans more than {MAX_SPAN_NS // (86_400 * _NS)} days; ask for"
                " consecutive ranges"
            )
        if self.retention_ns > 0:
            since_ns = max(since_ns, self._clock_ns() - self.retention_ns)
        return since_ns, max(since_ns, until_ns)

    def _pages(self, driver_id: str, since_ns: int, until_ns: int) -> AsyncIterator[list[Location]]:
        return self._windowed(self.store.history_pages, driver_id, since_ns, until_ns)

    def _row_pages(
        self, driver_id: str, since_ns: int, until_ns: int
    ) -> AsyncIterator[list[HistoryRow]]:
        return self._windowed(self.store.history_row_pages, driver_id, since_ns, until_ns)

    async def _windowed(
        self,
        read: Callable[[str, int, int], AsyncIterator[list[_Page]]],
        driver_id: str,
        since_ns: int,
        until_ns: int,
    ) -> AsyncIterator[list[_Page]]:
        """`read`'s pages within the retention window. A range wholly past the retention
        still asks the store (an unknown driver is NOT_FOUND) but yields nothing."""
        since_ns, until_ns = self.window(driver_id, since_ns, until_ns)
        pages = read(driver_id, since_ns, until_ns)
        if since_ns == until_ns:
            async for _ in pages:
                break
            return
        async for page in pages:
            yield page

    # --- trail -----------------------------------------------------------------------------
    async def trail_rows(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        tolerance_m: float = 0.0,
        max_points: int | None = None,
    ) -> AsyncIterator[list[HistoryRow]]:
        """`trail` as plain rows, for encoding: without thinning the store's rows go out as
        they are (no Location built per fix); with thinning, `trail`'s fixes as rows."""
        validate_thinning(tolerance_m, max_points)
        if tolerance_m > 0.0 or max_points is not None:
            async for chunk in self.trail(driver_id, since_ns, until_ns, tolerance_m, max_points):
                yield [
                    (x.latitude, x.longitude, x.speed_mps, x.heading_degrees, x.recorded_at_ns)
                    for x in chunk
                ]
            return
        pending: list[HistoryRow] = []
        async for page in self._row_pages(driver_id, since_ns, until_ns):
            if not pending and len(page) % TRAIL_CHUNK_POINTS == 0:
                for i in range(0, len(page), TRAIL_CHUNK_POINTS):
                    yield page[i : i + TRAIL_CHUNK_POINTS]
                continue
            pending.extend(page)
            full = len(pending) - len(pending) % TRAIL_CHUNK_POINTS
            for i in range(0, full, TRAIL_CHUNK_POINTS):
                yield pending[i : i + TRAIL_CHUNK_POINTS]
            del pending[:full]
        for i in range(0, len(pending), TRAIL_CHUNK_POINTS):
            yield pending[i : i + TRAIL_CHUNK_POINTS]

    async def trail(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        tolerance_m: float = 0.0,
        max_points: int | None = None,
    ) -> AsyncIterator[list[Location]]:
        """The fixes in chunks of at most TRAIL_CHUNK_POINTS, in fix-time order. Without
        thinning they stream as the store pages them; with a tolerance only, through the
        windowed thinner (memory O(window)); a cap needs the whole range (bounded by the
        maximum span)."""
        validate_thinning(tolerance_m, max_points)
        pages = self._pages(driver_id, since_ns, until_ns)
        if max_points is not None:
            fixes = [x async for page in pages for x in page]
            for chunk in _chunks(thin_trail(fixes, tolerance_m, max_points)):
                yield chunk
            return
        thinner = TrailThinner(tolerance_m) if tolerance_m > 0.0 else None
        pending: list[Location] = []
        async for page in pages:
            pending.extend(page if thinner is None else thinner.add(page))
            while len(pending) >= TRAIL_CHUNK_POINTS:
                yield pending[:TRAIL_CHUNK_POINTS]
                del pending[:TRAIL_CHUNK_POINTS]
        if thinner is not None:
            pending.extend(thinner.finish())
        for chunk in _chunks(pending):
            yield chunk

    # --- trips and summary -----------------------------------------------------------------
    async def trips(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        thresholds: TripThresholds = DEFAULT_THRESHOLDS,
    ) -> TripsAndStops:
        detector = TripDetector(thresholds)
        async for page in self._pages(driver_id, since_ns, until_ns):
            detector.add_all(page)
        return detector.finish()

    async def summary(
        self,
        driver_id: str,
        since_ns: int,
        until_ns: int,
        thresholds: TripThresholds = DEFAULT_THRESHOLDS,
    ) -> Summary:
        return summarize(await self.trips(driver_id, since_ns, until_ns, thresholds))

    # --- erasure ---------------------------------------------------------------------------
    async def forget(self, driver_id: str, *, by: str) -> Erasure:
        """Erase everything stored about the driver: queued commands first (none is
        delivered meanwhile), then live state and indexes, then the durable store (an
        unknown driver raises DriverNotFound there, after the derived stores were
        cleaned of anything stale). One log line says who erased whom and how much."""
        validate_driver_id(driver_id)
        commands = 0 if self._forget_commands is None else await self._forget_commands(driver_id)
        live = 0
        for forget in self._forget_live:
            live += await forget(driver_id)
        stored: Forgotten = await self.store.forget_driver(driver_id)
        erasure = Erasure(
            driver_id,
            stored.history_fixes,
            stored.driver_records,
            commands,
            live,
            stored.tracker_states,
            stored.events,
        )
        # Logged once the store has erased, before the second pass: if that pass fails the
        # caller is answered with an error, a retry finds nothing stored (NOT_FOUND), and
        # this line is then the only record of who erased the driver.
        log.warning(
            "driver erased: %s by %s (history fixes %d, driver records %d, queued commands %d,"
            " live entries %d, tracker states %d, events %d)",
            driver_id,
            by,
            erasure.history_fixes,
            erasure.driver_records,
            erasure.queued_commands,
            erasure.live_entries,
            erasure.tracker_states,
            erasure.events,
        )
        # Again: a read that raced the erasure may have refilled live state from the store
        # before the store forgot the driver (adapters/redis/live.py refuses such a refill
        # once this second pass has run).
        try:
            for forget in self._forget_live:
                await forget(driver_id)
        except Exception:
            log.error(  # noqa: TRY400 - the cause goes up to the caller, not into this line
                "driver %s: erased from the store, but clearing its live state again failed:"
                " call ForgetDriver again (it answers NOT_FOUND and clears live state first)",
                driver_id,
            )
            raise
        return erasure

    # --- retention -------------------------------------------------------------------------
    async def expire_once(self, every_s: float = RETENTION_EVERY_S) -> int:
        """One retention pass: storage made ahead and the size figures refreshed (each at
        most once per `every_s`, also while a long backlog drains), then every fix older
        than the cutoff (fixed when the pass starts) removed in paced steps: each step is
        followed by a rest in proportion to its time, so a backlog of any size drains at
        the pacer's share of the store and never crowds out ingestion."""
        now = self._clock_ns()
        await self._maintain(every_s)
        removed = 0
        if self.retention_ns > 0:
            cutoff = now - self.retention_ns
            store = self.store

            async def step(batch: int) -> int:
                done = await store.expire_history(cutoff, batch)
                # Counted before the rest: a pass stopped while resting loses no count.
                self.expired_total += done
                return done

            def busy() -> float:
                return store.expiry_busy_s

            while (done := await self.pacer.step(step, busy)) > 0:
                removed += done
                if await self._maintain(every_s):
                    log.info(
                        "history retention: draining a backlog, %d fixes expired in this pass"
                        " so far, oldest kept %s, %d a step",
                        removed,
                        self.stats.oldest_ns,
                        self.pacer.batch,
                    )
        if removed:
            self.stats = await self.store.history_stats()
        return removed

    async def _maintain(self, every_s: float) -> bool:
        """Make storage ahead and refresh the figures if `every_s` has passed since the
        last time (PostgreSQL: the partitions' catalogue and statistics are not free)."""
        at = self._monotonic()
        if self._maintained_at is not None and at - self._maintained_at < every_s:
            return False
        self._maintained_at = at
        await self.store.prepare_history(self._clock_ns())
        self.stats = await self.store.history_stats()
        return True

    async def run_retention(
        self, every_s: float = RETENTION_EVERY_S, first_after_s: float | None = None
    ) -> None:
        """The supervised background loop (restart policy): a pass, then `every_s` of
        rest; a failed pass is logged once and retried at the next. The first pass waits
        `first_after_s` (default one interval): start-up made the storage ahead already,
        and the first uploads should not meet maintenance."""
        await asyncio.sleep(every_s if first_after_s is None else first_after_s)
        while True:
            try:
                removed = await self.expire_once(every_s)
            except Exception as exc:  # noqa: BLE001 - the store is away; the next pass retries
                self._failures.failed(exc)
            else:
                self._failures.succeeded()
                if removed:
                    log.info("history retention removed %d fixes", removed)
            await asyncio.sleep(every_s)


def _chunks(fixes: list[Location]) -> list[list[Location]]:
    return [fixes[i : i + TRAIL_CHUNK_POINTS] for i in range(0, len(fixes), TRAIL_CHUNK_POINTS)]
