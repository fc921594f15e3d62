"""SessionInbox: what a DriverSession handles next. Client events keep their order and are
bounded, pushed commands go first, shutdown goes before everything, and an idle inbox
holds no buffers (a server keeps 10,000 of them)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from driver_service.app.session_inbox import PushedCommand, SessionInbox
from driver_service.domain import ShuttingDown


async def settle() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_events_come_out_in_order_whether_the_session_waits_or_not() -> None:
    inbox = SessionInbox()
    waiting = asyncio.create_task(inbox.get())
    await settle()
    await inbox.put("a")  # handed to the waiting session
    await inbox.put("b")  # buffered: the session has not run yet
    await inbox.put("c")
    assert await waiting == "a"
    assert [await inbox.get(), await inbox.get()] == ["b", "c"]


async def test_pushed_commands_go_ahead_of_client_events() -> None:
    inbox = SessionInbox()
    await inbox.put("event")
    assert inbox.push("offer-1")
    assert inbox.push("offer-2")
    first, second, third = [await inbox.get() for _ in range(3)]
    assert isinstance(first, PushedCommand)
    assert first.command == "offer-1"
    assert isinstance(second, PushedCommand)
    assert second.command == "offer-2"
    assert third == "event"


async def test_a_push_wakes_a_session_that_waits_for_its_client() -> None:
    inbox = SessionInbox()
    waiting = asyncio.create_task(inbox.get())
    await settle()
    assert inbox.push("offer")
    got = await asyncio.wait_for(waiting, 1.0)
    assert isinstance(got, PushedCommand)
    assert got.command == "offer"


async def test_shutdown_goes_ahead_of_everything_and_refuses_new_commands() -> None:
    inbox = SessionInbox()
    waiting = asyncio.create_task(inbox.get())
    await settle()
    inbox.shut_down()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(waiting, 1.0)

    busy = SessionInbox()
    await busy.put("event")
    assert busy.push("offer")
    busy.shut_down()
    with pytest.raises(ShuttingDown):
        await busy.get()
    assert not busy.push("late offer")


async def test_client_events_are_bounded_and_the_reader_resumes_when_there_is_room() -> None:
    inbox = SessionInbox(maxsize=2)
    await inbox.put(1)
    await inbox.put(2)
    third = asyncio.create_task(inbox.put(3))
    await settle()
    assert not third.done()  # a client cannot queue unbounded work
    assert await inbox.get() == 1
    await asyncio.wait_for(third, 1.0)
    assert [await inbox.get(), await inbox.get()] == [2, 3]


async def test_pushed_commands_are_bounded_too() -> None:
    inbox = SessionInbox()
    assert all(inbox.push(n) for n in range(SessionInbox.MAX_COMMANDS))
    assert not inbox.push("one too many")


async def test_a_cancelled_session_does_not_swallow_the_next_event() -> None:
    inbox = SessionInbox()
    waiting = asyncio.create_task(inbox.get())
    await settle()
    waiting.cancel()
    await settle()
    await inbox.put("event")
    assert await asyncio.wait_for(inbox.get(), 1.0) == "event"


async def test_idle_inboxes_hold_no_buffers_once_drained() -> None:
    """Per idle session the inbox costs a small object, not a queue's four deques (~3 KB)."""
    count = 1000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        inboxes = [SessionInbox() for _ in range(count)]
        for inbox in inboxes:  # every buffer used once, then drained
            await inbox.put("event")
            inbox.push("offer")
            await inbox.get()
            await inbox.get()
        gc.collect()
        per_inbox = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert len(inboxes) == count
    assert per_inbox < 256, f"{per_inbox:.0f} bytes per idle inbox"
