"""One client stream of locations (an UploadLocations call, or a session's locations): what it
received, and what was durably stored as sent."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from driver_service.app.ratelimit import RateLimiter
from driver_service.app.writer import Commit, LocationWriter
from driver_service.domain import (
    InvalidInput,
    Location,
    LocationRules,
    RateLimited,
    Rejection,
    StoreUnavailable,
)
from driver_service.domain.validation import Fix, validate_location, validate_locations

DomainErrorT = TypeVar("DomainErrorT", InvalidInput, RateLimited)

#: UploadSummary's counts are int32: a stream that runs for years reports the largest.
INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class UploadResult:
    received_count: int
    persisted_count: int
    session_id: str


class UploadHost(Protocol):
    """What an upload needs of the application (`DriverTracking` has it)."""

    writer: LocationWriter
    rules: LocationRules
    rate_limiter: RateLimiter | None
    count_rejection: Callable[[Rejection], None] | None


class Upload:
    """One UploadLocations stream (or a session's locations): counts what it received and
    what was durably stored as sent.

    It keeps only what commits still in flight need: for each, the stream's updates in it
    (to subtract those the store refused as conflicts); a finished commit is settled into
    the counts as the next one begins, so a stream that runs for hours holds no more than
    its updates of the commits not yet done.
    """

    __slots__ = (
        "_limiter",
        "_lost",
        "_pending",
        "_persisted",
        "_rules",
        "_service",
        "received",
        "session_id",
        "writer",
    )

    def __init__(self, service: UploadHost) -> None:
        self._service = service
        # Read once per stream, not per update.
        self._rules = service.rules
        self._limiter = service.rate_limiter
        #: The service's writer: a stream reads `writer.full` before each `offer_now`.
        self.writer = service.writer
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
        writer = self.writer
        if writer.full:
            await writer.wait_for_room()
        return self.offer_now(
            driver_id, latitude, longitude, speed_mps, heading_degrees, recorded_at_ns
        )

    @property
    def full(self) -> bool:
        """Whether the writer has no room: wait with `wait_for_room` before `offer_now`."""
        return self.writer.full

    async def wait_for_room(self) -> None:
        await self.writer.wait_for_room()

    def offer_now(
        self,
        driver_id: str,
        latitude: float,
        longitude: float,
        speed_mps: float,
        heading_degrees: float,
        recorded_at_ns: int | None,
    ) -> InvalidInput | RateLimited | None:
        """`offer` without waiting for room (the caller waited while `full`): no coroutine
        per update on the streams' hot path, and no point at which a cancel can land."""
        self.received += 1
        # Admission inline (a frame less per update): valid, and within its driver's rate.
        # A missing timestamp means "now" (the seed's clients may leave it unset).
        now_ns = time.time_ns()
        try:
            location = validate_location(
                driver_id,
                latitude,
                longitude,
                speed_mps,
                heading_degrees,
                now_ns if recorded_at_ns is None else recorded_at_ns,
                now_ns,
                self._rules,
            )
        except InvalidInput as invalid:
            return self._rejected(invalid, Rejection.INVALID)
        limiter = self._limiter
        if limiter is not None and not limiter.allow(driver_id):
            limited = RateLimited(f"driver {driver_id!r} sends more updates than allowed")
            return self._rejected(limited, Rejection.RATE_LIMITED)
        done = self.writer.submit(location)
        pending = self._pending
        if pending and pending[-1][0] is done:
            pending[-1][1].append(location)
        else:
            self._begin(done, [location])
        return None

    def _rejected(self, error: DomainErrorT, reason: Rejection) -> DomainErrorT:
        """Count an update refused without being stored; return why, for the caller."""
        count = self._service.count_rejection
        if count is not None:
            count(reason)
        return error

    async def offer_many(self, fixes: Sequence[Fix]) -> None:
        """`offer` for many updates at once (a batch message): the same validation, rate
        limit, counting and acknowledgement, in one validation loop and one queueing call."""
        self.received += len(fixes)
        service = self._service
        writer = self.writer
        if writer.full:
            await writer.wait_for_room()
        valid, invalid = validate_locations(fixes, time.time_ns(), service.rules)
        count = service.count_rejection
        if count is not None:
            for _ in invalid:
                count(Rejection.INVALID)
        limiter = service.rate_limiter
        if limiter is not None:
            allow = limiter.allow
            allowed = [location for location in valid if allow(location.driver_id)]
            if count is not None:
                for _ in range(len(valid) - len(allowed)):
                    count(Rejection.RATE_LIMITED)
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
                    count(Rejection.CONFLICT)
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
