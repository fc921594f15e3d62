"""One driver session's inbox: the client's events and the server's commands, in the order
the session must handle them."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from driver_service.domain import ShuttingDown

#: The client events of the transport in front (the servicer's request messages).
EventT = TypeVar("EventT")


@dataclass(frozen=True, slots=True)
class PushedCommand:
    """A command for the session's driver, pushed by dispatch. Opaque to the application:
    the transport that sent it knows its type (`wire.server_command` checks it)."""

    command: object


@dataclass(frozen=True, slots=True)
class InputEnded:
    """The client's stream ended: cleanly (`error` None) or with the error its read raised."""

    error: Exception | None = None


class SessionInbox(Generic[EventT]):
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
        self._events: deque[EventT | InputEnded] | None = None
        #: Pushed commands the session has not sent yet; None while there are none.
        self._commands: deque[PushedCommand] | None = None
        #: The session waiting for something to handle; resolved with an event or _WAKE.
        self._waiter: asyncio.Future[EventT | InputEnded | object] | None = None
        #: The reader waiting for room among the buffered events.
        self._room: asyncio.Future[None] | None = None
        self._shutting_down = False
        #: The driver this session speaks for, set by its first accepted event.
        self.driver_id: str | None = None

    def _hand_over(self, item: EventT | InputEnded | object) -> bool:
        """Resolve the waiting session's future with `item`; False if nobody waits."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return False
        self._waiter = None
        waiter.set_result(item)
        return True

    async def put(self, item: EventT | InputEnded) -> None:
        """Add a client event, or the end of the client's input; wait while `maxsize` events
        are already pending."""
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

    async def get(self) -> EventT | InputEnded | PushedCommand:
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
                return cast("EventT | InputEnded", item)
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
