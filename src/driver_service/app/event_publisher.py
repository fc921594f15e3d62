"""EventPublisher: the event log published to a message broker (an `EventSink`), at least
once, in log order, off the ingestion path.

One supervised loop asks the broker where publishing got to (`last_published_id`), then
reads the log after it page by page and publishes each page; the cursor moves only once the
broker acknowledged, and is never written anywhere else: after a restart of this process,
of the broker, or a lost connection, publishing resumes from the broker's newest event. An
event published twice carries the same message id and the broker drops the copy.

Nothing waits on it: the loop wakes when this process logs events (`notify`) or every
`poll_s`, so a slow, paused or absent broker holds up only publishing, while the log keeps
every event until the broker takes it (within the log's retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from driver_service.domain.events import LoggedEvent
from driver_service.ports import EventLog, EventSink
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor

log = logging.getLogger(__name__)

NANOS = 10**9
#: Events read from the log and published per step.
PAGE = 500
#: Waits after a failure: doubled from the first to the last.
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0


@dataclass
class PublisherHooks:
    """What metrics want to know (all optional)."""

    #: (events acknowledged, event time to ack of each, seconds)
    on_published: Callable[[int, list[float]], None] | None = None
    on_failure: Callable[[], None] | None = None


class EventPublisher:
    def __init__(
        self,
        sink: EventSink,
        log_: EventLog,
        supervisor: TaskSupervisor,
        *,
        poll_s: float = 1.0,
        hooks: PublisherHooks | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.sink = sink
        self._log = log_
        self._supervisor = supervisor
        self._poll_s = poll_s
        self.hooks = hooks or PublisherHooks()
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: Supervised | None = None
        #: The newest event id the broker acknowledged (None until it was asked).
        self.cursor: int | None = None
        #: The newest event id logged, as last seen; head - cursor is how far behind it is.
        self.head = 0
        #: Event ids the log's retention removed before they were published (at most; ids
        #: may have holes).
        self.lost = 0
        #: Why the last attempt failed, while it is failing; None when publishing works.
        self.problem: str | None = "not connected yet"

    @property
    def behind(self) -> int:
        """Events logged but not yet acknowledged (an upper bound: ids may have holes)."""
        return max(0, self.head - (self.cursor or 0)) if self.cursor is not None else self.head

    def start(self) -> None:
        self._task = self._supervisor.start(
            f"event-sink-{self.sink.name}", self._run, Policy.RESTART
        )

    def notify(self, events: Sequence[LoggedEvent] = ()) -> None:
        """Events were logged: publish them now. They are read from the log, not taken as
        handed over: what waits for a slow or absent broker stays in the log, where the
        retention and a driver's erasure reach it."""
        if events:
            self.head = max(self.head, events[-1].event_id)
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._publish_all()
            except Exception as exc:  # noqa: BLE001 - any failure: retry after a wait
                failures += 1
                if self.problem is None or failures == 1:
                    log.warning("event sink %s: publishing failed: %r", self.sink.name, exc)
                self.problem = f"{self.sink.name}: {exc!r}"[:300]
                if self.hooks.on_failure is not None:
                    self.hooks.on_failure()
                await asyncio.sleep(min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** min(failures, 10)))
                continue
            if self.problem is not None:
                log.warning("event sink %s: publishing (at event %s)", self.sink.name, self.cursor)
            failures, self.problem = 0, None
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that lands as the wake-up completes, and the loop would run on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _publish_all(self) -> None:
        """Publish every event after the cursor, page by page, until caught up."""
        if self.cursor is None:
            self.cursor = await self.sink.last_published_id()
            log.info("event sink %s: resuming after event %d", self.sink.name, self.cursor)
        while True:
            page = await self._log.read_events(self.cursor, PAGE)
            if not page:
                self.head = max(self.head, self.cursor)
                return
            self.head = max(self.head, page[-1].event_id)
            if page[0].event_id > self.cursor + 1:
                await self._check_gap(page[0].event_id)
            await self.sink.publish(page)
            self.cursor = page[-1].event_id
            if self.hooks.on_published is not None:
                now = self._clock()
                self.hooks.on_published(len(page), [(now - e.event.at_ns) / NANOS for e in page])
            if len(page) < PAGE:
                return

    async def _check_gap(self, next_id: int) -> None:
        """Ids may have holes (rolled-back transactions), but events the log's retention
        removed before the broker took them are lost to the broker: say so, never silently."""
        assert self.cursor is not None
        oldest = await self._log.oldest_event_id()
        if self.cursor + 1 < oldest:
            self.lost += oldest - self.cursor - 1
            log.error(
                "event sink %s: events after %d up to %d were removed by --event-retention "
                "before the broker took them; publishing goes on from %d",
                self.sink.name, self.cursor, oldest - 1, next_id,
            )  # fmt: skip

    async def close(self) -> None:
        """Stop publishing (an unacknowledged page is published again at the next start)
        and close the broker connection."""
        if self._task is not None:
            await self._task.stop()
            self._task = None
        await self.sink.close()
