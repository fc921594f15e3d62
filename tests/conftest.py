"""Fixtures shared by every test tier (private PostgreSQL and Redis servers), and the rule
that a skipped test fails the run: a missing service must never pass silently."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import settings
from redis.asyncio import Redis

from driver_service.adapters.redis.connection import create_redis_client
from tests.helpers.nats import NatsServer
from tests.helpers.postgres import PostgresServer, create_database
from tests.helpers.redis import RedisServer

# Properties are checked for what they assert, not for speed: the suite runs its tiers in
# parallel on two cores, where one example can take longer than hypothesis's 200 ms default.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"{len(_skipped)} test(s) skipped; skips fail this suite: {', '.join(_skipped)}",
            red=True,
        )


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL (one per xdist worker)."""
    server = PostgresServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's server, (re)started if a test left it stopped."""
    postgres_server.start()
    return await create_database(postgres_server)


@pytest.fixture
def own_postgres_server() -> Iterator[PostgresServer]:
    """A server for one test that crashes it: crash recovery fsyncs the whole data directory,
    which on the session's server means every earlier test's database (seconds)."""
    server = PostgresServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# --- Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's private Redis (one per xdist worker)."""
    server = RedisServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test alone, for tests that kill and restart it."""
    server = RedisServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    """A NATS server with JetStream of this test alone (its own store), started."""
    server = NatsServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def redis_prefix() -> str:
    """Keys and channels of this test only: tests share the session's server."""
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the session's server, restarted first if a previous test killed it."""
    redis_server.start()
    client = create_redis_client(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report on the item (`item.rep_call`), for fixtures that act on failure
    (the browser test's screenshot)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
