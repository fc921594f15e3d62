"""OfflineSweeper: logs driver.offline for drivers unseen for more than `--stale-after`.

Runs under the supervisor (RESTART: a failed sweep is retried with backoff). Every replica
sweeps; the store changes a driver's tracker state only if it is still online and stale,
under the driver's row lock, in the transaction that logs the event, so each offline is
logged once whichever replica gets there first (ports.EventLog.sweep_offline).
"""

from __future__ import annotations

import asyncio
import logging
import time

from driver_service.ports import EventLog
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor

log = logging.getLogger(__name__)


class OfflineSweeper:
    def __init__(
        self,
        events: EventLog,
        supervisor: TaskSupervisor,
        stale_after_s: float,
        interval_s: float | None = None,
    ) -> None:
        self._events = events
        self._supervisor = supervisor
        self._stale_after_ns = int(stale_after_s * 1e9)
        #: A tenth of stale-after, between 0.2 s and 5 s: offline is logged at most that late
        #: (its time is exact whatever the sweep's: last seen plus stale-after).
        self._interval_s = interval_s or min(5.0, max(0.2, stale_after_s / 10))
        self._task: Supervised | None = None

    def start(self) -> None:
        self._task = self._supervisor.start("offline-sweeper", self._run, Policy.RESTART)

    async def sweep_once(self) -> int:
        return await self._events.sweep_offline(time.time_ns(), self._stale_after_ns)

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                count = await self.sweep_once()
            except Exception as exc:  # noqa: BLE001 - the store is away or full: next sweep
                # One line when sweeps start failing, no traceback: the location writer
                # reports the store's failure itself, and the next sweep catches up.
                if not failing:
                    log.warning("sweeping stale drivers failed, retrying: %r", exc)
                failing = True
                continue
            if failing:
                log.warning("sweeping stale drivers works again")
            failing = False
            if count:
                log.debug("logged driver.offline for %d drivers", count)

    async def close(self) -> None:
        if self._task is not None:
            await self._task.stop()
            self._task = None
