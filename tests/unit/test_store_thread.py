"""The SQLite store's thread: jobs run in order on one thread, outcomes reach their waiters, a
cancelled waiter leaves the job and the thread alone, shutdown runs what is queued."""

from __future__ import annotations

import asyncio
import threading

import pytest

from driver_service.adapters.sqlite._thread import StoreThread


async def test_jobs_run_in_order_on_one_thread() -> None:
    thread = StoreThread("test-store")
    try:
        ran: list[tuple[int, str]] = []
        futures = [
            thread.submit(lambda i=i: ran.append((i, threading.current_thread().name)) or i)
            for i in range(50)
        ]
        assert await asyncio.gather(*futures) == list(range(50))
        assert [i for i, _ in ran] == list(range(50))
        assert {name for _, name in ran} == {"test-store"}
    finally:
        thread.shutdown()


async def test_an_exception_reaches_its_waiter_and_the_thread_goes_on() -> None:
    thread = StoreThread("test-store")
    try:

        def fail() -> None:
            raise ValueError("no such table")

        with pytest.raises(ValueError, match="no such table"):
            await thread.submit(fail)
        assert await thread.submit(lambda: 7) == 7
    finally:
        thread.shutdown()


async def test_a_cancelled_waiter_leaves_the_job_and_the_next_ones() -> None:
    thread = StoreThread("test-store")
    try:
        release = threading.Event()
        ran = threading.Event()
        blocker = thread.submit(release.wait)
        job = thread.submit(ran.set)
        job.cancel()  # the caller stops waiting: the job still runs, its outcome is dropped
        release.set()
        assert await blocker is True
        assert await thread.submit(lambda: "after") == "after"
        assert ran.is_set()
    finally:
        thread.shutdown()


async def test_shutdown_runs_what_is_queued_then_refuses_more() -> None:
    thread = StoreThread("test-store")
    done: list[int] = []
    futures = [thread.submit(lambda i=i: done.append(i)) for i in range(10)]
    thread.shutdown()
    assert done == list(range(10))
    assert await asyncio.gather(*futures) == [None] * 10  # each outcome reached the loop
    with pytest.raises(RuntimeError):
        thread.submit(lambda: None)
