"""WebhookDelivery: the event log delivered to webhook endpoints, at least once, in order per
endpoint, off the ingestion path.

One supervised loop (restarted on failure) wakes when this process logs events (`notify`)
and at least every `poll_s`, leases the endpoints that have work and are due
(`WebhookStore.claim_endpoints`; on PostgreSQL `FOR UPDATE SKIP LOCKED`, so each endpoint is
worked by one replica at a time and taken over once a dead replica's lease expires), and runs
one task per leased endpoint, at most `max_concurrent` at once overall. A task delivers the
endpoint's items one at a time: first dead letters an operator queued for replay, then the
events after its cursor that match its filters. The cursor moves only after a 2xx (or when
the event becomes a dead letter), so a crash at any point delivers again, never loses.

A failure (non-2xx, timeout, refused connection, forbidden address) schedules the next
attempt after an exponential backoff with jitter and hands the endpoint back: nothing waits
on it, so a dead receiver costs one task slot for at most one request timeout. After
`max_age_s` of failing, the event becomes a dead letter and the cursor moves on. After
`circuit_threshold` failures in a row the circuit opens: the endpoint waits
`circuit_cooldown_s` before one probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from driver_service.domain.events import LoggedEvent, parse_type_filter
from driver_service.domain.webhooks import (
    DeadLetter,
    Endpoint,
    ForbiddenTarget,
    RetryPolicy,
    delivery_headers,
    event_payload,
)
from driver_service.ports import DeliveryError, EventLog, WebhookStore, WebhookTransport
from driver_service.resilience.supervision import Policy, Supervised, TaskSupervisor

log = logging.getLogger(__name__)

NANOS = 10**9
#: Events read from the log per page while looking for an endpoint's next match.
PAGE = 200
#: The loop looks for work at most this often (each look is a read of the store).
MIN_CLAIM_INTERVAL_S = 0.05
#: Wake-up timers kept to cancel on close (older ones have fired; pruned past this).
TIMERS_KEPT = 1000
#: A delivering endpoint's cursor is written at most this often.
SAVE_EVERY_S = 0.2
#: Queue depth and open circuits are measured this often.
MEASURE_EVERY_S = 1.0
#: Errors kept per endpoint, characters.
MAX_ERROR = 300
#: At shutdown, how long cancelled deliveries may take to release their leases (twice at most).
RELEASE_WAIT_S = 0.25


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt: `status` 0 when there was no HTTP response."""

    endpoint_id: str
    ok: bool
    status: int
    error: str
    duration_s: float
    #: Event time (fix time) to acknowledgement, for successes of logged events.
    lag_s: float | None = None
    #: delivered | http_error | no_response | refused_target
    kind: str = "delivered"


@dataclass
class DeliveryHooks:
    """What metrics want to know (all optional)."""

    on_attempt: Callable[[Outcome], None] | None = None
    on_dead_letter: Callable[[str], None] | None = None


class WebhookDelivery:
    def __init__(
        self,
        store: WebhookStore,
        log_: EventLog,
        transport: WebhookTransport,
        supervisor: TaskSupervisor,
        policy: RetryPolicy | None = None,
        *,
        allow_http: bool = False,
        max_concurrent: int = 64,
        poll_s: float = 1.0,
        lease_s: float = 30.0,
        owner: str | None = None,
        hooks: DeliveryHooks | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._log = log_
        self._transport = transport
        self._supervisor = supervisor
        self.policy = policy or RetryPolicy()
        self._allow_http = allow_http
        self._max_concurrent = max_concurrent
        self._poll_s = poll_s
        self._lease_ns = int(max(lease_s, self.policy.timeout_s * 2) * NANOS)
        # Host and process id first: an operator (or a test) reading the store's lease
        # owners can tell which replica holds an endpoint; the random part keeps a restarted
        # process that got the same pid from taking over its predecessor's leases at once.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._hooks = hooks or DeliveryHooks()
        self._clock = clock
        self._rng = random.Random()
        self._wake = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._task: Supervised | None = None
        #: Events after each endpoint's cursor (an upper bound: ids may have holes), for metrics.
        self.queue_depth = 0
        self.open_circuits = 0
        self.dead_letters = 0
        #: The last look at the endpoints found none (logged events then need no claim).
        self._no_endpoints = False
        #: Endpoint changes made here: a look that began before one does not count.
        self._changes = 0
        self._timers: set[asyncio.TimerHandle] = set()

    def start(self) -> None:
        self._task = self._supervisor.start("webhook-delivery", self._run, Policy.RESTART)

    def notify(self, events: Sequence[LoggedEvent] = ()) -> None:
        """Events were logged (or, with none, an endpoint changed here): look for work now.
        Each endpoint reads the log after its own cursor (the handed-over events are not
        kept: the log is where the retention and a driver's erasure reach them). While the
        last look found no endpoint at all (the default), logged events wake nothing: the
        poll looks again every `poll_s`, and an endpoint made here wakes the loop."""
        if events and self._no_endpoints:
            return
        if not events:
            self._no_endpoints = False
            self._changes += 1
        self._wake.set()

    async def _run(self) -> None:
        measured = 0.0
        try:
            while True:
                # asyncio.timeout, not wait_for: on Python 3.11 a stop that lands as the
                # wake-up completes is swallowed by wait_for (it returns the wake-up), and
                # this loop would run on past its stop, holding shutdown up.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
                self._wake.clear()
                head = await self._log.last_event_id()
                if time.monotonic() - measured >= MEASURE_EVERY_S:
                    measured = time.monotonic()
                    await self._measure(head)
                await self._claim(head)
                # However often events are logged, the store is asked at most this often.
                await asyncio.sleep(MIN_CLAIM_INTERVAL_S)
        finally:
            await self._cancel_active()

    async def _claim(self, head: int) -> None:
        free = self._max_concurrent - len(self._active)
        if free <= 0:
            return
        now = self._clock()
        claimed = await self._store.claim_endpoints(
            self.owner, now, now + self._lease_ns, head, free
        )
        for endpoint in claimed:
            if endpoint.endpoint_id in self._active:
                continue
            task = asyncio.create_task(
                self._serve(endpoint), name=f"webhook-{endpoint.endpoint_id}"
            )
            self._active[endpoint.endpoint_id] = task
            task.add_done_callback(functools.partial(self._done, endpoint.endpoint_id))

    def _done(self, endpoint_id: str, task: asyncio.Task[None]) -> None:
        self._active.pop(endpoint_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhook %s: delivery task failed: %r", endpoint_id, task.exception())
        self._wake.set()  # a slot is free: more endpoints may be waiting

    async def _measure(self, head: int) -> None:
        changes = self._changes
        endpoints = await self._store.list_endpoints()
        if changes == self._changes:
            self._no_endpoints = not endpoints
        self.queue_depth = sum(max(0, head - e.cursor) for e in endpoints if not e.paused)
        self.open_circuits = sum(
            1 for e in endpoints if e.consecutive_failures >= self.policy.circuit_threshold
        )
        self.dead_letters = await self._store.dead_letter_count()

    async def _serve(self, endpoint: Endpoint) -> None:
        """Deliver the endpoint's items in order until it is caught up or an attempt fails."""
        saved, saved_at = endpoint.cursor, time.monotonic()
        buffer: list[LoggedEvent] = []
        try:
            while True:
                replay = await self._store.next_replay(endpoint.endpoint_id)
                if replay is not None:
                    events = await self._log.read_events(replay.event_id - 1, 1)
                    if not events or events[0].event_id != replay.event_id:
                        # The event is gone from the log (pruned): nothing left to send.
                        await self._store.replayed(
                            endpoint, self.owner, replay.event_id, self._lease_until()
                        )
                        continue
                    kept = await self._attempt(endpoint, events[0], replay=True)
                else:
                    event, cursor = await self._next_event(endpoint, buffer)
                    if event is None:
                        if cursor != saved:
                            endpoint = replace(endpoint, cursor=cursor)
                            await self._store.save_progress(endpoint, self.owner, 0)
                        return
                    if cursor != endpoint.cursor:
                        endpoint = replace(endpoint, cursor=cursor)
                    kept = await self._attempt(endpoint, event, replay=False)
                if kept is None:
                    return  # failed (retry later) or the lease was lost
                endpoint = kept
                # The cursor is written at most every SAVE_EVERY_S (and when the task ends):
                # one commit per delivered event would compete with ingestion for the store
                # (SQLite's one writer). A crash re-delivers at most that much: at least once.
                if endpoint.cursor != saved and time.monotonic() - saved_at >= SAVE_EVERY_S:
                    if not await self._store.save_progress(
                        endpoint, self.owner, self._lease_until()
                    ):
                        return
                    saved, saved_at = endpoint.cursor, time.monotonic()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.release(endpoint.endpoint_id, self.owner))

    async def _next_event(
        self, endpoint: Endpoint, buffer: list[LoggedEvent]
    ) -> tuple[LoggedEvent | None, int]:
        """The first matching event after the cursor, and the cursor moved past the
        non-matching ones before it."""
        types = parse_type_filter(endpoint.types)
        cursor = endpoint.cursor
        while True:
            # The page read last time usually holds the next events: one read of the log per
            # PAGE events, not per delivery.
            page = [e for e in buffer if e.event_id > cursor]
            from_log = not page
            if from_log:
                page = await self._log.read_events(cursor, PAGE)
                buffer[:] = page
            for logged in page:
                e = logged.event
                if (
                    e.type in types
                    and (not endpoint.zone_ids or e.zone_id in endpoint.zone_ids)
                    and (not endpoint.driver_ids or e.driver_id in endpoint.driver_ids)
                ):
                    return logged, cursor
                cursor = logged.event_id
            if from_log and len(page) < PAGE:
                return None, cursor
            buffer.clear()  # used up: read the log next

    def _lease_until(self) -> int:
        return self._clock() + self._lease_ns

    async def _attempt(
        self, endpoint: Endpoint, logged: LoggedEvent, *, replay: bool
    ) -> Endpoint | None:
        """One POST; the endpoint's new state if the task may go on, None if it must stop."""
        outcome = await self.send(endpoint, logged)
        if self._hooks.on_attempt is not None:
            self._hooks.on_attempt(outcome)
        now = self._clock()
        if outcome.ok:
            done = replace(
                endpoint,
                cursor=endpoint.cursor if replay else logged.event_id,
                attempts=0,
                first_failure_ns=0,
                next_attempt_ns=0,
                consecutive_failures=0,
                last_error="",
            )
            if replay:
                still = await self._store.replayed(
                    done, self.owner, logged.event_id, self._lease_until()
                )
            else:
                still = True  # written by _serve, batched
            return done if still else None
        attempts = endpoint.attempts + 1
        first_failure = endpoint.first_failure_ns or now
        failures = endpoint.consecutive_failures + 1
        error = outcome.error[:MAX_ERROR]
        wait_s = self.policy.backoff_s(attempts, self._rng)
        if failures >= self.policy.circuit_threshold:
            wait_s = max(wait_s, self.policy.circuit_cooldown_s)
        if now - first_failure >= self.policy.max_age_s * NANOS:
            # The last attempt: set the event aside, go on with the next one (after the wait,
            # so a dead receiver is not hammered with the rest of the queue).
            letter = DeadLetter(
                endpoint.endpoint_id, logged.event_id, logged.event.type.value, attempts,
                error, now,
            )  # fmt: skip
            moved = replace(
                endpoint,
                cursor=endpoint.cursor if replay else logged.event_id,
                attempts=0,
                first_failure_ns=0,
                next_attempt_ns=now + int(wait_s * NANOS),
                consecutive_failures=failures,
                last_error=error,
            )
            await self._store.dead_letter(moved, self.owner, letter, self._lease_until())
            self._wake_after(wait_s)
            if self._hooks.on_dead_letter is not None:
                self._hooks.on_dead_letter(endpoint.endpoint_id)
            log.warning(
                "webhook %s: event %d dead-lettered after %d attempts: %s",
                endpoint.endpoint_id, logged.event_id, attempts, error,
            )  # fmt: skip
            return None
        failed = replace(
            endpoint,
            attempts=attempts,
            first_failure_ns=first_failure,
            next_attempt_ns=now + int(wait_s * NANOS),
            consecutive_failures=failures,
            last_error=error,
        )
        await self._store.save_progress(failed, self.owner, self._lease_until())
        self._wake_after(wait_s)
        return None

    def _wake_after(self, delay_s: float) -> None:
        """Look for work again when this endpoint is due (the poll would, later)."""
        loop = asyncio.get_running_loop()
        if len(self._timers) > TIMERS_KEPT:  # drop the ones that have fired
            self._timers = {t for t in self._timers if t.when() > loop.time()}
        self._timers.add(loop.call_later(delay_s, self._wake.set))

    async def send(self, endpoint: Endpoint, logged: LoggedEvent) -> Outcome:
        body = event_payload(logged)
        return await self.post(endpoint, str(logged.event_id), body, logged.event.at_ns)

    async def post(
        self, endpoint: Endpoint, msg_id: str, body: bytes, event_ns: int | None = None
    ) -> Outcome:
        """Sign and POST `body` once; never raises for the receiver's failures."""
        now = self._clock()
        headers = delivery_headers(endpoint.signing_secrets(now), msg_id, now // NANOS, body)
        started = time.monotonic()
        status = 0
        kind = "delivered"
        try:
            status = await self._post(endpoint.url, headers, body)
        except DeliveryError as exc:
            error, kind = str(exc) or type(exc).__name__, "no_response"
        except ForbiddenTarget as exc:
            error, kind = str(exc), "refused_target"
        else:
            if not 200 <= status < 300:
                error, kind = f"HTTP {status}", "http_error"
            else:
                error = ""
        duration = time.monotonic() - started
        ok = not error
        lag = (self._clock() - event_ns) / NANOS if ok and event_ns is not None else None
        return Outcome(endpoint.endpoint_id, ok, status, error, duration, lag, kind)

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        if not self._allow_http and not url.startswith("https://"):
            raise ForbiddenTarget("plain http:// is not allowed (--webhook-allow-http)")
        return await self._transport.post(url, headers, body, self.policy.timeout_s)

    async def _cancel_active(self) -> None:
        """Cancel the deliveries in flight (an interrupted one is delivered again later: at
        least once) and give them RELEASE_WAIT_S to hand their leases back; a release still
        waiting on a busy or absent store is then abandoned (SQLite clears leases at open,
        PostgreSQL's expire), so this never takes much over twice that."""
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=RELEASE_WAIT_S)
            for task in pending:
                task.cancel()  # ends the shielded wait for the release
            if pending:
                await asyncio.wait(pending, timeout=RELEASE_WAIT_S)
        self._active.clear()

    async def close(self) -> None:
        """Stop delivering, promptly: without endpoints at once, with deliveries in flight
        within about 2 * RELEASE_WAIT_S."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._task is not None:
            await self._task.stop()
            self._task = None
        await self._cancel_active()
