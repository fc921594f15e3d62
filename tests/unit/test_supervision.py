"""The task supervisor: no background task may end unnoticed, and a writer that ends must not
leave any caller waiting until its deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.fanout import MemoryBus
from driver_service.app.writer import LocationWriter
from driver_service.domain import Location, StoreUnavailable
from driver_service.ports import Recorded
from driver_service.resilience.supervision import Policy, TaskSupervisor


async def test_a_restart_task_that_fails_is_logged_counted_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[str] = []
    supervisor = TaskSupervisor(count_failure=failures.append)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"boom {runs}")
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, "driver_service.resilience.supervision"):
        supervisor.start("flaky", flaky, Policy.RESTART)
        deadline = time.monotonic() + 5
        while runs < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert runs == 3
    assert failures == ["flaky", "flaky"]
    assert supervisor.running == ["flaky"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info is not None for r in errors), "the traceback must be logged"
    await supervisor.close()
    assert supervisor.running == []


async def test_a_task_that_returns_counts_as_ended_unexpectedly() -> None:
    failures: list[str] = []
    supervisor = TaskSupervisor(count_failure=failures.append)
    ended = asyncio.Event()

    async def returns() -> None:
        ended.set()

    supervisor.start("returns", returns, Policy.RESTART)
    await asyncio.wait_for(ended.wait(), 1)
    await asyncio.sleep(0.01)
    assert failures == ["returns"]
    await supervisor.close()


async def test_a_fatal_task_that_fails_calls_on_fatal_once_and_is_not_restarted() -> None:
    fatal: list[tuple[str, str]] = []
    supervisor = TaskSupervisor(on_fatal=lambda name, exc: fatal.append((name, str(exc))))
    runs = 0
    released: list[bool] = []

    async def dies() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("disk on fire")

    handle = supervisor.start("core", dies, Policy.FATAL, on_exit=lambda: released.append(True))
    await asyncio.sleep(0.3)
    assert runs == 1
    assert fatal == [("core", "disk on fire")]
    assert released == [True]
    assert not handle.alive
    assert supervisor.fatal_failure == "core"
    await supervisor.close()


async def test_stopping_a_task_is_not_a_failure() -> None:
    failures: list[str] = []
    supervisor = TaskSupervisor(
        count_failure=failures.append, on_fatal=lambda *_: failures.append("fatal")
    )
    handle = supervisor.start("idle", asyncio.Event().wait, Policy.FATAL)
    await asyncio.sleep(0.01)
    await handle.stop()
    assert failures == []
    assert supervisor.running == []


class _BrokenResult(Recorded):
    """What a buggy adapter might return: a value that blows up when the writer uses it."""

    def __bool__(self) -> bool:
        raise RuntimeError("adapter bug")


class _BuggyRepository:
    """A real SQLite repository whose record_locations result is broken after `ok` calls."""

    def __init__(self, inner: SqliteRepository, ok: int) -> None:
        self.inner = inner
        self.ok = ok
        self.gate = asyncio.Event()
        self.gate.set()

    async def record_locations(self, locations: Sequence[Location]) -> Recorded:
        await self.gate.wait()
        advanced = await self.inner.record_locations(locations)
        self.ok -= 1
        return advanced if self.ok >= 0 else _BrokenResult(advanced)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_when_the_writer_dies_every_waiting_update_fails_at_once(tmp_path: Path) -> None:
    repo = await SqliteRepository.open(tmp_path / "d.db")
    try:
        buggy = _BuggyRepository(repo, ok=1)
        fatal: list[str] = []
        supervisor = TaskSupervisor(on_fatal=lambda name, _exc: fatal.append(name))
        writer = LocationWriter(buggy, MemoryBus(), supervisor=supervisor)  # type: ignore[arg-type]
        writer.start()
        base = time.time_ns() - 10**12
        await asyncio.wait_for(writer.submit(Location("d1", 1.0, 2.0, 0.0, 0.0, base)), 2)

        buggy.gate.clear()
        committed = writer.submit(Location("d1", 1.0, 2.0, 0.0, 0.0, base + 1))
        await asyncio.sleep(0.05)  # the writer took that batch and waits in the store
        waiting = writer.submit(Location("d1", 1.0, 2.0, 0.0, 0.0, base + 2))
        buggy.gate.set()

        await asyncio.wait_for(committed, 2)  # stored before the writer died: acknowledged
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(waiting, 2)  # at once, not at the caller's deadline
        assert fatal == ["location-writer"]
        assert not writer.running
        with pytest.raises(StoreUnavailable):
            writer.submit(Location("d1", 1.0, 2.0, 0.0, 0.0, base + 3))
        await asyncio.wait_for(writer.close(), 2)
    finally:
        await repo.close()
