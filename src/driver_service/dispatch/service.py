"""The dispatch application service: nearby search, commands to drivers and their outcome,
stale drivers. Plain async code over the index port and DriverTracking; no RPC library."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from driver_service.app.tracking import DriverTracking
from driver_service.dispatch.domain.commands import Command
from driver_service.dispatch.domain.drivers import IndexedDriver, NearbyDriver
from driver_service.dispatch.domain.geo import MAX_RADIUS_M
from driver_service.dispatch.offer_book import MemoryCommandRouter, OfferBook
from driver_service.dispatch.ports import CommandRouter, DriverIndex
from driver_service.domain import (
    DriverNotFound,
    InvalidInput,
    Status,
    StoreUnavailable,
    parse_status,
    validate_driver_id,
)
from driver_service.resilience.failure_log import FailureLog
from driver_service.resilience.supervision import Policy, Supervised

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 120.0
DEFAULT_SWEEP_EVERY_S = 5.0
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
DEFAULT_TTL_S = 30.0
MAX_TTL_S = 3600.0
_NS = 1_000_000_000


class BackgroundLoop(Protocol):
    """A long-running task: `run()` until `close()` (e.g. the Redis rebuild check)."""

    async def run(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DriverView:
    """DescribeDriver's answer."""

    driver: IndexedDriver
    stale: bool
    connected: bool


class Dispatch:
    """Find drivers near a point and send them commands; see offers.py for command states."""

    def __init__(
        self,
        tracking: DriverTracking,
        index: DriverIndex,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        sweep_every_s: float = DEFAULT_SWEEP_EVERY_S,
        clock_ns: Callable[[], int] = time.time_ns,
        commands: CommandRouter | None = None,
        background: Sequence[BackgroundLoop] = (),
    ) -> None:
        """`commands` routes commands and keeps their state: None for this process's own
        OfferBook (one process), a RedisCommandRouter when replicas share Redis.
        `background`: loops run from `start()` to `close()` beside the sweeper."""
        if stale_after_s <= 0:
            raise ValueError("stale_after_s must be positive")
        self.tracking = tracking
        self.index = index
        self.stale_after_ns = int(stale_after_s * _NS)
        self._sweep_every_s = sweep_every_s
        self._clock_ns = clock_ns
        #: The in-process book when commands stay in this process, else None.
        self.offers: OfferBook | None = None
        if commands is None:
            self.offers = OfferBook(tracking.push_command, clock_ns=clock_ns)
            commands = MemoryCommandRouter(self.offers, tracking)
        self.commands: CommandRouter = commands
        tracking.session_listeners.append(commands.on_session)
        tracking.session_close_listeners.append(commands.on_session_closed)
        self._stale_count = 0
        self._sweeper: Supervised | None = None
        self._sweep_failures = FailureLog(log, "sweeping stale drivers", level=logging.WARNING)
        self._background = tuple(background)
        self._loops: list[Supervised] = []

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.tracking.supervisor.start(
                "dispatch-sweeper", self._sweep_forever, Policy.RESTART
            )
            self._loops = [
                self.tracking.supervisor.start(type(loop).__name__, loop.run, Policy.RESTART)
                for loop in self._background
            ]

    async def close(self) -> None:
        for loop in self._background:
            loop.close()
        for handle in self._loops:
            await handle.stop()  # a loop in the middle of a check stops at once
        self._loops = []
        if self._sweeper is not None:
            await self._sweeper.stop()
            self._sweeper = None
        await self.commands.close()
        await self.index.close()

    async def sweep(self) -> int:
        """Take stale drivers out of the search structure; return how many are stale."""
        self._stale_count = await self.index.sweep(self._clock_ns() - self.stale_after_ns)
        return self._stale_count

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except StoreUnavailable:
                pass  # the index's store is down: its guard logged that once
            except Exception as exc:  # noqa: BLE001 - the index is away; the next sweep retries
                self._sweep_failures.failed(exc)
            else:
                self._sweep_failures.succeeded()
            await asyncio.sleep(self._sweep_every_s)

    @property
    def stale_drivers(self) -> int:
        """Known, non-OFFLINE drivers with no event for stale_after, as of the last sweep.
        Cheap and synchronous: register it as a gauge function."""
        return self._stale_count

    # --- FindNearbyDrivers -----------------------------------------------------------------
    async def find_nearby(
        self,
        latitude: float,
        longitude: float,
        radius_m: float,
        limit: int = 0,
        statuses: Sequence[str] = (),
        max_age_s: float | None = None,
    ) -> list[NearbyDriver]:
        if not (math.isfinite(latitude) and -90.0 <= latitude <= 90.0):
            raise InvalidInput("latitude must be within -90..90")
        if not (math.isfinite(longitude) and -180.0 <= longitude <= 180.0):
            raise InvalidInput("longitude must be within -180..180")
        if not (math.isfinite(radius_m) and 0.0 < radius_m <= MAX_RADIUS_M):
            raise InvalidInput(f"radius_m must be > 0 and at most {MAX_RADIUS_M:.0f}")
        if limit < 0 or limit > MAX_LIMIT:
            raise InvalidInput(f"limit must be within 0..{MAX_LIMIT} (0 means {DEFAULT_LIMIT})")
        wanted = {parse_status(s) for s in statuses} or {Status.AVAILABLE}
        if Status.OFFLINE in wanted:
            raise InvalidInput("OFFLINE drivers are never offered; ask for AVAILABLE or BUSY")
        max_age_ns = self.stale_after_ns
        if max_age_s is not None:
            if not (math.isfinite(max_age_s) and max_age_s > 0):
                raise InvalidInput("max_age must be positive")
            max_age_ns = min(max_age_ns, int(max_age_s * _NS))
        return await self.index.nearby(
            latitude,
            longitude,
            radius_m,
            limit or DEFAULT_LIMIT,
            wanted,
            self._clock_ns() - max_age_ns,
        )

    # --- DescribeDriver --------------------------------------------------------------------
    async def describe(self, driver_id: str) -> DriverView:
        validate_driver_id(driver_id)
        driver = await self.index.get(driver_id)
        if driver is None:
            raise DriverNotFound(driver_id)
        stale = driver.last_seen_at_ns < self._clock_ns() - self.stale_after_ns
        connected = self.tracking.has_session(driver_id) or await self.commands.connected(driver_id)
        return DriverView(driver, stale, connected)

    # --- SendCommand / GetCommandStatus / AnswerOffer ---------------------------------------
    async def send_command(
        self,
        driver_id: str,
        payload: object,
        *,
        offer_id: str | None,
        ttl_s: float | None = None,
    ) -> Command:
        """Send `payload`; `offer_id` is None for a command that is not a ride offer, and ""
        for an offer whose id the server chooses."""
        driver_id, command_id, ttl = self._checked(driver_id, offer_id, ttl_s)
        return await self.commands.send(driver_id, command_id, payload, offer_id is not None, ttl)

    async def get_command(self, command_id: str) -> Command:
        return await self.commands.get(command_id)

    async def wait(self, command_id: str, timeout_s: float | None) -> Command:
        return await self.commands.wait(command_id, timeout_s)

    async def answer_offer(self, offer_id: str, driver_id: str, accepted: bool) -> Command:
        validate_driver_id(driver_id)
        return await self.commands.answer(offer_id, driver_id, accepted)

    @staticmethod
    def _checked(
        driver_id: str, offer_id: str | None, ttl_s: float | None
    ) -> tuple[str, str, float]:
        validate_driver_id(driver_id)
        ttl = DEFAULT_TTL_S if ttl_s is None else ttl_s
        if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL_S):
            raise InvalidInput(f"ttl must be > 0 and at most {MAX_TTL_S:.0f} s")
        command_id = offer_id or f"cmd-{uuid.uuid4().hex}"
        if len(command_id) > 128:
            raise InvalidInput("offer_id is longer than 128 characters")
        return driver_id, command_id, ttl
