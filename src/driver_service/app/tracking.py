"""The application's use cases: each DriverService RPC's logic over the ports, no RPC library.

Servicers in `api/` translate the wire to these calls and back; so another transport can
be put in front of the same logic and measured against grpc.aio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from driver_service.app.ratelimit import RateLimiter
from driver_service.app.session_inbox import SessionInbox
from driver_service.app.upload import Upload
from driver_service.app.writer import DEFAULT_MAX_PENDING, LocationWriter
from driver_service.domain import (
    DEFAULT_RULES,
    Driver,
    DriverNotFound,
    Location,
    LocationRules,
    Rejection,
    ShuttingDown,
    StoreUnavailable,
    parse_status,
    validate_driver_id,
)
from driver_service.ports import (
    DriverRepository,
    LocationBus,
    MissedLocations,
    Subscription,
    SubscriptionClosed,
)
from driver_service.resilience.failure_log import FailureLog
from driver_service.resilience.supervision import TaskSupervisor

log = logging.getLogger(__name__)


class DriverTracking:
    """Ingests locations and statuses, answers current state, streams live locations."""

    def __init__(
        self,
        repository: DriverRepository,
        bus: LocationBus,
        rules: LocationRules = DEFAULT_RULES,
        max_pending: int | None = None,
        rate_limiter: RateLimiter | None = None,
        count_rejection: Callable[[Rejection], None] | None = None,
        supervisor: TaskSupervisor | None = None,
        current: Callable[[str], Driver | None] | None = None,
    ) -> None:
        self.repository = repository
        #: A driver's current state without a wait, where this process holds it for sure
        #: (see `current_driver`); None: every read goes through the repository.
        self._current = current
        self.rate_limiter = rate_limiter
        #: Told why, for each update refused without being stored (metrics).
        self.count_rejection = count_rejection
        self.bus = bus
        self.rules = rules
        self.supervisor = supervisor or TaskSupervisor()
        self.writer = LocationWriter(
            repository,
            bus,
            max_pending=DEFAULT_MAX_PENDING if max_pending is None else max_pending,
            supervisor=self.supervisor,
        )
        self._subscriptions: set[Subscription] = set()
        self._sessions: set[SessionInbox[Any]] = set()
        self._sessions_by_driver: dict[str, list[SessionInbox[Any]]] = {}
        #: Called with a driver id when a session starts speaking for that driver (e.g. to
        #: deliver commands queued while it was offline).
        self.session_listeners: list[Callable[[str], None]] = []
        #: Called with a driver id when a session that spoke for that driver ends (e.g. to
        #: stop listening for the driver's commands once no session here speaks for it).
        self.session_close_listeners: list[Callable[[str], None]] = []
        self._stopping = False
        # While the store is away every call fails: no traceback per call.
        self._read_failures = FailureLog(log, "reading drivers", level=logging.WARNING)
        self._status_failures = FailureLog(log, "storing status changes")

    async def start(self) -> None:
        self.writer.start()

    # --- GetDriver -----------------------------------------------------------------------
    async def get_driver(self, driver_id: str) -> Driver:
        validate_driver_id(driver_id)
        try:
            driver = await self.repository.get_driver(driver_id)
        except Exception as exc:
            self._read_failures.failed(exc, driver_id)
            raise StoreUnavailable("driver store is unavailable; retry shortly") from exc
        self._read_failures.succeeded()
        if driver is None:
            raise DriverNotFound(driver_id)
        return driver

    def current_driver(self, driver_id: str) -> Driver | None:
        """The driver as this process knows it for sure, without a wait (GetDriver's fast
        path); None when it does not hold it (an unknown or invalid id, a store whose state
        lives elsewhere, a replica's view that may be behind): then ask `get_driver`, which
        validates, reads the store and raises the error a caller must see."""
        current = self._current
        return None if current is None else current(driver_id)

    # --- StreamLocation --------------------------------------------------------------------
    async def watch(self, driver_id: str) -> AsyncIterator[Location]:
        """Yield the latest known location at once (if any), then each newer one as it is
        accepted. An unknown driver is waited for: its first location is sent when it comes.
        If the bus may have lost locations (MissedLocations), the newest is read again."""
        validate_driver_id(driver_id)
        if self._stopping:
            raise ShuttingDown("server is shutting down; reconnect to another replica")
        subscription = await self.bus.subscribe(driver_id)
        self._subscriptions.add(subscription)
        try:
            last_sent_ns = -1
            driver = await self.repository.get_driver(driver_id)
            if driver is not None and driver.location is not None:
                last_sent_ns = driver.location.recorded_at_ns
                yield driver.location
            _raise_if_cancel_swallowed()
            while True:
                try:
                    location = await subscription.next()
                except SubscriptionClosed:
                    raise ShuttingDown(
                        "server is shutting down; reconnect to another replica"
                    ) from None
                except MissedLocations:
                    # The bus lost its link and is back: a driver that stopped moving meanwhile
                    # would otherwise never be sent its last location.
                    driver = await self.repository.get_driver(driver_id)
                    if driver is None or driver.location is None:
                        continue
                    location = driver.location
                if location.recorded_at_ns > last_sent_ns:
                    last_sent_ns = location.recorded_at_ns
                    yield location
        finally:
            self._subscriptions.discard(subscription)
            subscription.close()

    # --- UploadLocations / DriverSession locations -----------------------------------------
    def new_upload(self) -> Upload:
        if self._stopping:
            raise ShuttingDown("server is shutting down; reconnect to another replica")
        return Upload(self)

    # --- DriverSession status --------------------------------------------------------------
    async def change_status(self, driver_id: str, new_status: str) -> Driver:
        validate_driver_id(driver_id)
        status = parse_status(new_status)
        try:
            driver = await self.repository.set_status(driver_id, status, time.time_ns())
        except Exception as exc:
            self._status_failures.failed(exc, driver_id)
            raise StoreUnavailable("driver store is unavailable; status not changed") from exc
        self._status_failures.succeeded()
        return driver

    def open_session(self) -> SessionInbox[Any]:
        """Register a DriverSession; shutdown ends it through its inbox."""
        if self._stopping:
            raise ShuttingDown("server is shutting down; reconnect to another replica")
        inbox: SessionInbox[Any] = SessionInbox()
        self._sessions.add(inbox)
        return inbox

    def close_session(self, inbox: SessionInbox[Any]) -> None:
        self._sessions.discard(inbox)
        if inbox.driver_id is not None:
            bound = self._sessions_by_driver.get(inbox.driver_id, [])
            if inbox in bound:
                bound.remove(inbox)
            if not bound:
                self._sessions_by_driver.pop(inbox.driver_id, None)
            for listener in self.session_close_listeners:
                listener(inbox.driver_id)

    def bind_session(self, inbox: SessionInbox[Any], driver_id: str) -> None:
        """Record that this session speaks for `driver_id` (its first accepted event)."""
        if inbox.driver_id is not None:
            return
        inbox.driver_id = driver_id
        self._sessions_by_driver.setdefault(driver_id, []).append(inbox)
        for listener in self.session_listeners:
            listener(driver_id)

    def push_command(self, driver_id: str, command: object) -> bool:
        """Deliver a command to the driver's newest open session on this server."""
        bound = self._sessions_by_driver.get(driver_id)
        return bound[-1].push(command) if bound else False

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def watcher_count(self) -> int:
        """Open StreamLocation subscriptions on this server."""
        return len(self._subscriptions)

    def has_session(self, driver_id: str) -> bool:
        return driver_id in self._sessions_by_driver

    @staticmethod
    def server_time_ms() -> int:
        return time.time_ns() // 1_000_000

    # --- lifecycle -------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """End live streams so their clients reconnect elsewhere; uploads may still finish."""
        self._stopping = True
        for subscription in list(self._subscriptions):
            subscription.close()
        for inbox in list(self._sessions):
            inbox.shut_down()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def close(self) -> None:
        """Commit everything accepted, then release the adapters."""
        self.begin_shutdown()
        await self.writer.close()
        await self.bus.close()
        await self.repository.close()


def _raise_if_cancel_swallowed() -> None:
    """Honour a cancel that an await swallowed, before a wait that may never end. On Python
    3.11 `asyncio.wait_for` returns a result when the cancel comes as its awaitable completes,
    and redis-py wraps every command's send in it: a watcher whose client hung up during its
    SUBSCRIBE or first read would otherwise wait for its driver forever (tests/chaos)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
