"""The application service: each DriverService RPC's logic over the ports, no RPC library.

Servicers in `api/` translate the wire to these calls and back; so another transport can
be put in front of the same logic and measured against grpc.aio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from driver_service.app.ratelimit import RateLimiter
from driver_service.app.writer import DEFAULT_MAX_PENDING, Commit, LocationWriter
from driver_service.domain import (
    DEFAULT_RULES,
    Driver,
    DriverNotFound,
    InvalidInput,
    Location,
    LocationRules,
    RateLimited,
    ShuttingDown,
    StoreUnavailable,
    parse_status,
    validate_driver_id,
    validate_location,
)
from driver_service.domain.validation import Fix, validate_locations
from driver_service.ports import DriverRepository, LocationBus, Subscription, SubscriptionClosed
from driver_service.resilience.failure_log import FailureLog
from driver_service.resilience.supervision import TaskSupervisor

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class UploadResult:
    received_count: int
    persisted_count: int
    session_id: str


class DriverTracking:
    """Ingests locations and statuses, answers current state, streams live locations."""

    def __init__(
        self,
        repository: DriverRepository,
        bus: LocationBus,
        rules: LocationRules = DEFAULT_RULES,
        max_pending: int | None = None,
        rate_limiter: RateLimiter | None = None,
        count_rejection: Callable[[str], None] | None = None,
        supervisor: TaskSupervisor | None = None,
    ) -> None:
        self.repository = repository
        self.rate_limiter = rate_limiter
        #: Told "invalid" or "rate_limited" for each update dropped (metrics).
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
        self._sessions: set[SessionInbox] = set()
        self._sessions_by_driver: dict[str, list[SessionInbox]] = {}
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

    # --- StreamLocation --------------------------------------------------------------------
    async def watch(self, driver_id: str) -> AsyncIterator[Location]:
        """Yield the latest known location at once (if any), then each newer one as it is
        accepted. An unknown driver is waited for: its first location is sent when it comes."""
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

    def admit_location(
        self,
        driver_id: str,
        latitude: float,
        longitude: float,
        speed_mps: float,
        heading_degrees: float,
        recorded_at_ns: int | None,
    ) -> Location:
        """The update as a Location if it is valid and within its driver's rate (else
        InvalidInput or RateLimited), ready to queue with `writer.submit`. A missing
        timestamp means "now" (the seed's clients may leave it unset)."""
        now_ns = time.time_ns()
        location = validate_location(
            driver_id,
            latitude,
            longitude,
            speed_mps,
            heading_degrees,
            now_ns if recorded_at_ns is None else recorded_at_ns,
            now_ns,
            self.rules,
        )
        limiter = self.rate_limiter
        if limiter is not None and not limiter.allow(driver_id):
            raise RateLimited(f"driver {driver_id!r} sends more updates than allowed")
        return location

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

    def open_session(self) -> SessionInbox:
        """Register a DriverSession; shutdown ends it through its inbox."""
        if self._stopping:
            raise ShuttingDown("server is shutting down; reconnect to another replica")
        inbox = SessionInbox()
        self._sessions.add(inbox)
        return inbox

    def close_session(self, inbox: SessionInbox) -> None:
        self._sessions.discard(inbox)
        if inbox.driver_id is not None:
            bound = self._sessions_by_driver.get(inbox.driver_id, [])
            if inbox in bound:
                bound.remove(inbox)
            if not bound:
                self._sessions_by_driver.pop(inbox.driver_id, None)
            for listener in self.session_close_listeners:
                listener(inbox.driver_id)

    def bind_session(self, inbox: SessionInbox, driver_id: str) -> None:
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


@dataclass(frozen=True, slots=True)
class PushedCommand:
    """A server command for the session's driver (opaque here; the servicer knows its type)."""

    command: object


class SessionInbox:
    """What one DriverSession must handle next: client events in order, server-pushed
    commands ahead of them, and shutdown ahead of everything. Client events are bounded, so
    a client cannot queue unbounded work; pushed commands never wait for the client.

    A server holds thousands of idle sessions, so an idle inbox holds almost nothing: one
    future the session waits on, and buffers only while something is actually pending (an
    event handed to a waiting session skips the buffer). One reader puts, one session gets.
    """

    __slots__ = (
        "_commands",
        "_events",
        "_maxsize",
        "_room",
        "_shutting_down",
        "_waiter",
        "driver_id",
    )

    _WAKE = object()
    MAX_COMMANDS = 256

    def __init__(self, maxsize: int = 64) -> None:
        self._maxsize = maxsize
        #: Client events the session has not taken yet; None while there are none.
        self._events: deque[object] | None = None
        #: Pushed commands the session has not sent yet; None while there are none.
        self._commands: deque[PushedCommand] | None = None
        #: The session waiting for something to handle; resolved with an event or _WAKE.
        self._waiter: asyncio.Future[object] | None = None
        #: The reader waiting for room among the buffered events.
        self._room: asyncio.Future[None] | None = None
        self._shutting_down = False
        #: The driver this session speaks for, set by its first accepted event.
        self.driver_id: str | None = None

    def _hand_over(self, item: object) -> bool:
        """Resolve the waiting session's future with `item`; False if nobody waits."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return False
        self._waiter = None
        waiter.set_result(item)
        return True

    async def put(self, item: object) -> None:
        """Add a client event; wait while `maxsize` events are already pending."""
        while (events := self._events) is not None and len(events) >= self._maxsize:
            room = self._room = asyncio.get_running_loop().create_future()
            try:
                await room
            finally:
                self._room = None
        if events is None:
            if self._hand_over(item):
                return
            events = self._events = deque()
        events.append(item)

    async def get(self) -> object:
        """The next pushed command or client event; raise ShuttingDown once the server stops."""
        while not self._shutting_down:
            if (commands := self._commands) is not None:
                command = commands.popleft()
                if not commands:
                    self._commands = None
                return command
            if (events := self._events) is not None:
                item = events.popleft()
                if not events:
                    self._events = None
                if (room := self._room) is not None and not room.done():
                    room.set_result(None)
                return item
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                item = await waiter
            finally:
                self._waiter = None
            if item is not self._WAKE and not self._shutting_down:
                return item
        raise ShuttingDown("server is shutting down; reconnect to another replica")

    def push(self, command: object) -> bool:
        """Queue a command for the driver without waiting; False if too many are pending."""
        if self._shutting_down:
            return False
        commands = self._commands
        if commands is None:
            commands = self._commands = deque()
        elif len(commands) >= self.MAX_COMMANDS:
            return False
        commands.append(PushedCommand(command))
        self._hand_over(self._WAKE)
        return True

    def shut_down(self) -> None:
        self._shutting_down = True
        self._hand_over(self._WAKE)


class Upload:
    """One UploadLocations stream (or a session's locations): counts what it received and
    what was durably stored as sent.

    It keeps only what commits still in flight need: for each, the stream's updates in it
    (to subtract those the store refused as conflicts); a finished commit is settled into
    the counts as the next one begins, so a stream that runs for hours holds no more than
    its updates of the commits not yet done.
    """

    __slots__ = ("_lost", "_pending", "_persisted", "_service", "received", "session_id")

    def __init__(self, service: DriverTracking) -> None:
        self._service = service
        self.session_id = f"upl-{uuid.uuid4().hex}"
        self.received = 0
        #: Commits not settled yet, oldest first, each with this stream's updates in it.
        self._pending: deque[tuple[Commit, list[Location]]] = deque()
        self._persisted = 0
        self._lost = 0

    async def offer(
        self,
        driver_id: str,
        latitude: float,
        longitude: float,
        speed_mps: float,
        heading_degrees: float,
        recorded_at_ns: int | None,
    ) -> InvalidInput | RateLimited | None:
        """Count and, if valid and within the rate, queue one update; else return why not."""
        self.received += 1
        service = self._service
        writer = service.writer
        if writer.full:
            await writer.wait_for_room()
        try:
            location = service.admit_location(
                driver_id, latitude, longitude, speed_mps, heading_degrees, recorded_at_ns
            )
        except (InvalidInput, RateLimited) as exc:
            count = service.count_rejection
            if count is not None:
                count("invalid" if isinstance(exc, InvalidInput) else "rate_limited")
            return exc
        done = writer.submit(location)
        pending = self._pending
        if pending and pending[-1][0] is done:
            pending[-1][1].append(location)
        else:
            self._begin(done, [location])
        return None

    async def offer_many(self, fixes: Sequence[Fix]) -> None:
        """`offer` for many updates at once (a batch message): the same validation, rate
        limit, counting and acknowledgement, in one validation loop and one queueing call."""
        self.received += len(fixes)
        service = self._service
        writer = service.writer
        if writer.full:
            await writer.wait_for_room()
        valid, invalid = validate_locations(fixes, time.time_ns(), service.rules)
        count = service.count_rejection
        if count is not None:
            for _ in invalid:
                count("invalid")
        limiter = service.rate_limiter
        if limiter is not None:
            allow = limiter.allow
            allowed = [location for location in valid if allow(location.driver_id)]
            if count is not None:
                for _ in range(len(valid) - len(allowed)):
                    count("rate_limited")
            valid = allowed
        if valid:
            done = writer.submit_many(valid)
            pending = self._pending
            if pending and pending[-1][0] is done:
                pending[-1][1].extend(valid)
            else:
                self._begin(done, valid)

    @property
    def unsettled_commits(self) -> int:
        """Commits whose outcome this stream has not counted yet: those in flight, and at
        most the one it last used (however long the stream runs)."""
        return len(self._pending)

    def _begin(self, done: Commit, locations: list[Location]) -> None:
        """This stream's first updates in the commit `done`; settle the commits before it
        that are done already (so the state held stays that of commits in flight)."""
        pending = self._pending
        while pending and pending[0][0].done():
            self._settle(*pending.popleft())
        pending.append((done, locations))

    def _settle(self, done: Commit, locations: list[Location]) -> None:
        """Count a finished commit's updates of this stream: stored as sent, refused as a
        conflict, or lost with a failed commit."""
        if not done.succeeded():
            self._lost += len(locations)
            return
        refused = 0
        conflicts = done.conflicts
        if conflicts:
            # By value: an update's fate depends only on its values and the fix stored for
            # its key, so equal updates (of any stream) share it.
            refused = sum(1 for location in locations if location in conflicts)
            count = self._service.count_rejection
            if count is not None:
                for _ in range(refused):
                    count("conflict")
        self._persisted += len(locations) - refused

    async def settled(self) -> None:
        """Wait until the commit of this stream's latest update is done (all earlier ones
        are then done too: commits run one after another), so that a session answers its
        next event only once the locations before it are visible to GetDriver. A failed
        commit is not raised here: finish() reports it. Shielded (Commit.wait): cancelling
        this session leaves the shared commit alone."""
        if self._pending:
            with contextlib.suppress(StoreUnavailable):
                await self._pending[-1][0].wait()

    async def finish(self) -> UploadResult:
        """Wait for every queued update's commit. If any commit failed, raise
        StoreUnavailable (the caller resends; storing is idempotent) rather than acknowledge
        a stream that was only partly stored. Cancelling this wait (the caller hung up)
        leaves the commits, which other streams share, untouched."""
        pending = self._pending
        while pending:
            done = pending[0][0]
            with contextlib.suppress(StoreUnavailable):
                await done.wait()
            self._settle(*pending.popleft())
        persisted, lost = self._persisted, self._lost
        if lost:
            raise StoreUnavailable(
                f"storage is unavailable: {lost} of {persisted + lost} valid updates were not "
                "stored; resend the stream (updates already stored are not duplicated)"
            )
        return UploadResult(
            min(self.received, INT32_MAX), min(persisted, INT32_MAX), self.session_id
        )
