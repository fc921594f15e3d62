"""Derived state (the spatial index, live state in Redis) is rebuilt from the store, the source
of truth, never trusted to survive a restart: this module reads the store's fresh drivers page by
page and merges each page into every target.

Targets merge (`DriverIndex.fill`, `LiveStateRepository.fill`): a location never moves back in
time and a newer status is never replaced by the store's older one, so a rebuild may run while
ingestion goes on, and two rebuilds may overlap, without losing an update.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from driver_service.dispatch.ports import DEFAULT_PAGE_SIZE, DriverSource
from driver_service.domain import Driver

log = logging.getLogger(__name__)

#: Bound on one page (read plus every target's merge): a dependency that hangs fails the
#: rebuild, which is then retried, instead of stalling it for ever.
DEFAULT_PAGE_TIMEOUT_S = 10.0

Fill = Callable[[Sequence[Driver]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What one rebuild did, for logs, tests and the report of start-up time."""

    drivers: int
    pages: int
    seconds: float


async def rebuild_from_store(
    repository: DriverSource,
    targets: Sequence[Fill],
    seen_since_ns: int,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    page_timeout_s: float = DEFAULT_PAGE_TIMEOUT_S,
    after_page: Callable[[], Awaitable[None]] | None = None,
) -> RebuildResult:
    """Merge every driver seen at or after `seen_since_ns` into each target, a page at a time.

    `after_page` runs after each page (a Redis rebuild extends its lock there, and aborts by
    raising if it lost it). Raises whatever the store or a target raised: the caller retries.
    """
    started = time.perf_counter()
    drivers = pages = 0
    iterator = repository.drivers_seen_since(seen_since_ns, page_size)
    try:
        while True:
            async with asyncio.timeout(page_timeout_s):
                try:
                    page = await anext(iterator)
                except StopAsyncIteration:
                    break
                for fill in targets:
                    await fill(page)
                if after_page is not None:
                    await after_page()
            drivers += len(page)
            pages += 1
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    return RebuildResult(drivers, pages, time.perf_counter() - started)


async def rebuild_memory_index(
    repository: DriverSource,
    fill: Fill,
    horizon_s: float,
    *,
    clock_ns: Callable[[], int] = time.time_ns,
) -> RebuildResult:
    """Fill this process's own index at start, before serving (nothing else writes it yet).
    Only drivers seen within `horizon_s` (dispatch's `--stale-after`) matter to dispatch."""
    result = await rebuild_from_store(repository, [fill], clock_ns() - int(horizon_s * 1e9))
    log.info(
        "spatial index rebuilt from the store: %d drivers in %.3f s",
        result.drivers,
        result.seconds,
    )
    return result
