"""Server-Sent Events: a stream of `(id, event, data)` items as `text/event-stream`, with a
comment line as heartbeat whenever nothing was sent for `heartbeat_s`, ended when the server
stops. The source is never cancelled by a heartbeat: the pending read carries over."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SseItem:
    data: Any
    event: str | None = None
    id: str | None = None


def encode(item: SseItem) -> bytes:
    lines = []
    if item.id is not None:
        lines.append(f"id: {item.id}")
    if item.event is not None:
        lines.append(f"event: {item.event}")
    lines.append("data: " + json.dumps(item.data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


HEARTBEAT = b": heartbeat\n\n"


async def sse_stream(
    source: AsyncIterator[SseItem], heartbeat_s: float, stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    """The encoded stream of `source`, heartbeats between, until the source ends or the
    server stops; either way a last `event: end`, so a client tells an end from a broken
    link."""
    yield b"retry: 1000\n\n"
    stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            waits: set[asyncio.Future[Any]] = {pending, stop}
            done, _ = await asyncio.wait(
                waits, timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                try:
                    item = pending.result()
                except StopAsyncIteration:  # ours never end but for the server ending them
                    reason = "server shutting down" if stopping.is_set() else "stream ended"
                    yield encode(SseItem({"reason": reason}, event="end"))
                    return
                except Exception as exc:  # noqa: BLE001 - e.g. UNAVAILABLE on shutdown
                    message = getattr(exc, "message", None) or "stream failed"
                    yield encode(SseItem({"reason": message}, event="end"))
                    return
                pending = None
                yield encode(item)
            elif stop in done:
                yield encode(SseItem({"reason": "server shutting down"}, event="end"))
                return
            else:
                yield HEARTBEAT
    finally:
        stop.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(BaseException):
            await source.aclose()  # type: ignore[attr-defined]


class DropOldest:
    """A bounded buffer between a fast source and a slow reader: when full, the oldest item
    goes (live locations: the newest position is what a map needs). Counts what it dropped."""

    def __init__(self, source: AsyncIterator[SseItem], size: int) -> None:
        self._items: deque[SseItem] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self._done = False
        self._error: BaseException | None = None
        self.dropped = 0
        self._task = asyncio.get_running_loop().create_task(self._pump(source))

    async def _pump(self, source: AsyncIterator[SseItem]) -> None:
        try:
            async for item in source:
                if len(self._items) == self._items.maxlen:
                    self.dropped += 1
                self._items.append(item)
                self._ready.set()
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which re-raises it
            self._error = exc
        finally:
            self._done = True
            self._ready.set()

    def __aiter__(self) -> DropOldest:
        return self

    async def __anext__(self) -> SseItem:
        while not self._items:
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
