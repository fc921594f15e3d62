"""The offer book: commands on their way to drivers, each with a ttl and a state.

    QUEUED ──session opens──▶ DELIVERED ──driver answers──▶ ACCEPTED | DECLINED
      │                          │ (offers only; a navigation update is final once delivered)
      └─ttl─▶ EXPIRED            └─ttl─▶ TIMED_OUT

A command for a driver without an open session waits in that driver's queue and is handed
to its next session the moment the session speaks for the driver; once its ttl has passed it
is EXPIRED and is never delivered. Final commands are kept for `retention_s` so callers can
still read their outcome, then forgotten. One book per process; `ports.CommandRouter` is the port
Dispatch uses, with `MemoryCommandRouter` (this book) as the embedded default and
`RedisCommandRouter` (adapters/redis/command_router.py) when replicas share Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from driver_service.dispatch.domain.commands import (
    Command,
    CommandNotFound,
    CommandState,
    NotOfferRecipient,
    OfferNotOpen,
)
from driver_service.dispatch.ports import SessionHost
from driver_service.domain import InvalidInput, RateLimited

DEFAULT_RETENTION_S = 600.0
MAX_QUEUED_PER_DRIVER = 64


class OfferBook:
    """Sends commands through `push(driver_id, payload) -> bool` (DriverTracking.push_command)
    and queues the ones no session took. Call `on_session(driver_id)` when a session starts
    speaking for a driver (DriverTracking.session_listeners)."""

    def __init__(
        self,
        push: Callable[[str, object], bool],
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        max_queued_per_driver: int = MAX_QUEUED_PER_DRIVER,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._push = push
        self._retention_s = retention_s
        self._max_queued = max_queued_per_driver
        self._clock_ns = clock_ns
        self._commands: dict[str, Command] = {}
        self._queues: dict[str, deque[Command]] = {}

    def send(
        self, driver_id: str, command_id: str, payload: object, is_offer: bool, ttl_s: float
    ) -> Command:
        """Deliver now if the driver has a session here, else queue it for at most `ttl_s`."""
        if command_id in self._commands:
            raise InvalidInput(f"command id {command_id!r} is already in use")
        queue = self._queues.get(driver_id)
        if queue is not None and len(queue) >= self._max_queued:
            raise RateLimited(
                f"driver {driver_id!r} already has {self._max_queued} queued commands"
            )
        now = self._clock_ns()
        command = Command(command_id, driver_id, payload, is_offer, now + int(ttl_s * 1e9))
        self._commands[command_id] = command
        command.timer = asyncio.get_running_loop().call_later(ttl_s, self._ttl_passed, command)
        if not self._deliver(command, now):
            self._queues.setdefault(driver_id, deque()).append(command)
        return command

    def on_session(self, driver_id: str) -> None:
        """Hand the driver's queued commands, oldest first, to its newly bound session."""
        queue = self._queues.get(driver_id)
        now = self._clock_ns()
        while queue:
            command = queue[0]
            if command.expires_at_ns <= now:
                queue.popleft()
                self._settle(command, CommandState.EXPIRED, now)
                continue
            if not self._deliver(command, now):
                break
            queue.popleft()
        if queue is not None and not queue:
            del self._queues[driver_id]

    def _deliver(self, command: Command, now: int) -> bool:
        if not self._push(command.driver_id, command.payload):
            return False
        command.state = CommandState.DELIVERED
        command.delivered_at_ns = now
        if not command.is_offer:
            self._settle(command, CommandState.DELIVERED, now)
        return True

    def _ttl_passed(self, command: Command) -> None:
        command.timer = None
        if command.state is CommandState.QUEUED:
            queue = self._queues.get(command.driver_id)
            if queue is not None:
                queue.remove(command)
                if not queue:
                    del self._queues[command.driver_id]
            self._settle(command, CommandState.EXPIRED, self._clock_ns())
        elif command.state is CommandState.DELIVERED and command.is_offer:
            self._settle(command, CommandState.TIMED_OUT, self._clock_ns())

    def _settle(self, command: Command, state: CommandState, now: int) -> None:
        """Make the command final (a delivered navigation update stays DELIVERED), wake
        whoever waits for it, and forget it after the retention period."""
        command.state = state
        command.settled_at_ns = now
        command.settled.set()
        if command.timer is not None:
            command.timer.cancel()
        command.timer = asyncio.get_running_loop().call_later(
            self._retention_s, self._commands.pop, command.command_id, None
        )

    def answer(self, offer_id: str, driver_id: str, accepted: bool) -> Command:
        """Record the driver's answer. Repeating the same answer is harmless (the app may
        retry); a different or late one is refused."""
        command = self.get(offer_id)
        if command.driver_id != driver_id:
            raise NotOfferRecipient(f"offer {offer_id!r} was not sent to driver {driver_id!r}")
        if not command.is_offer:
            raise OfferNotOpen(f"command {offer_id!r} is not a ride offer")
        wanted = CommandState.ACCEPTED if accepted else CommandState.DECLINED
        if command.state is wanted:
            return command
        if command.state is not CommandState.DELIVERED:
            raise OfferNotOpen(
                f"offer {offer_id!r} is {command.state.name}, not awaiting an answer"
            )
        self._settle(command, wanted, self._clock_ns())
        return command

    def get(self, command_id: str) -> Command:
        command = self._commands.get(command_id)
        if command is None:
            raise CommandNotFound(f"command {command_id!r} not found")
        return command

    async def wait(self, command_id: str, timeout_s: float | None) -> Command:
        """The command once final, or as it is when `timeout_s` runs out."""
        command = self.get(command_id)
        if not command.settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(command.settled.wait(), timeout_s)
        return command

    def queued(self, driver_id: str) -> int:
        queue = self._queues.get(driver_id)
        return 0 if queue is None else len(queue)

    def forget(self, driver_id: str) -> int:
        """Erase every command of the driver (erasure): its queue, and the commands kept
        for their outcome. A queued or delivered one still open settles EXPIRED first, so
        whoever waits for it wakes; none is delivered afterwards. Returns how many."""
        self._queues.pop(driver_id, None)
        mine = [c for c in self._commands.values() if c.driver_id == driver_id]
        now = self._clock_ns()
        for command in mine:
            if command.timer is not None:
                command.timer.cancel()
                command.timer = None
            if not command.settled.is_set():
                command.state = CommandState.EXPIRED
                command.settled_at_ns = now
                command.settled.set()
            del self._commands[command.command_id]
        return len(mine)

    def close(self) -> None:
        """Cancel every timer (on shutdown)."""
        for command in self._commands.values():
            if command.timer is not None:
                command.timer.cancel()
                command.timer = None
        self._commands.clear()
        self._queues.clear()


class MemoryCommandRouter:
    """The CommandRouter of one process: the OfferBook over this process's sessions."""

    def __init__(self, book: OfferBook, sessions: SessionHost) -> None:
        self.book = book
        self._sessions = sessions

    async def send(
        self, driver_id: str, command_id: str, payload: object, is_offer: bool, ttl_s: float
    ) -> Command:
        return self.book.send(driver_id, command_id, payload, is_offer, ttl_s)

    async def get(self, command_id: str) -> Command:
        return self.book.get(command_id)

    async def wait(self, command_id: str, timeout_s: float | None) -> Command:
        return await self.book.wait(command_id, timeout_s)

    async def answer(self, offer_id: str, driver_id: str, accepted: bool) -> Command:
        return self.book.answer(offer_id, driver_id, accepted)

    async def queued(self, driver_id: str) -> int:
        return self.book.queued(driver_id)

    async def connected(self, driver_id: str) -> bool:
        return self._sessions.has_session(driver_id)

    async def forget(self, driver_id: str) -> int:
        return self.book.forget(driver_id)

    def on_session(self, driver_id: str) -> None:
        self.book.on_session(driver_id)

    def on_session_closed(self, driver_id: str) -> None:
        """Nothing to do: the book asks the sessions at each delivery."""

    async def close(self) -> None:
        self.book.close()
