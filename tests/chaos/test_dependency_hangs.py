"""A dependency that hangs (SIGSTOP: the socket stays open, nothing answers) must cost callers
no more than their deadline, and the service must recover by itself once it answers again
(SIGCONT): uploads acknowledged, health SERVING, nothing acknowledged lost, nothing leaked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import driver_pb2 as pb
from tests.helpers import storm
from tests.helpers.chaos_server import SERVING, ChaosServer, health_status, start_chaos_server
from tests.helpers.postgres import PostgresServer, create_database
from tests.helpers.redis import RedisServer
from tests.helpers.server_process import Launcher

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(60)]

#: How long the dependency is stopped, and the deadline of every call made meanwhile.
HANG_S = 3.0
DEADLINE_S = 0.5
#: A late answer is still one within its deadline: the client's timer and the event loop.
LATE_SLACK_S = 0.3
#: After SIGCONT the service must be SERVING again within this.
RECOVERY_S = 5.0


@contextlib.contextmanager
def stopped(pid: int, group: bool) -> Iterator[None]:
    """SIGSTOP a process (or its whole process group: PostgreSQL's backends too), SIGCONT on
    the way out whatever happens."""
    send = os.killpg if group else os.kill
    send(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        send(pid, signal.SIGCONT)


async def timed_call(call: Callable[[], Awaitable[object]], late: list[str], what: str) -> None:
    """Make one call with its deadline; any answer will do, but not one past the deadline."""
    started = time.monotonic()
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        await call()
    took = time.monotonic() - started
    if took > DEADLINE_S + LATE_SLACK_S:
        late.append(f"{what}: {took:.2f} s")


async def callers_during_hang(chaos: ChaosServer, late: list[str]) -> None:
    """Every RPC kind, over and over, each with a DEADLINE_S deadline, for HANG_S."""
    ledger = chaos.ledger
    async with chaos.clients() as c:

        async def upload() -> None:
            fixes = ledger.fixes(1, 5, prefix="hang")
            summary = await c.driver.UploadLocations(iter(fixes), timeout=DEADLINE_S)
            ledger.acknowledge(fixes, summary.persisted_count)

        async def watch() -> None:
            call = c.driver.StreamLocation(
                pb.StreamLocationRequest(driver_id="hang-1"), timeout=DEADLINE_S
            )
            await storm.drain(call)

        async def session() -> None:
            call = c.driver.DriverSession(timeout=DEADLINE_S)
            await call.write(storm.location_event(ledger, 2, "hang"))
            await call.write(storm.HEARTBEAT)
            await storm.drain(call)

        async def offer() -> None:
            sent = await c.dispatch.SendCommand(storm.ride_offer("hang-1"), timeout=DEADLINE_S)
            await c.dispatch.GetCommandStatus(
                dpb.GetCommandStatusRequest(command_id=sent.command_id, wait_for_outcome=True),
                timeout=DEADLINE_S,
            )

        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "GetDriver": lambda: c.driver.GetDriver(
                pb.GetDriverRequest(driver_id="hang-1"), timeout=DEADLINE_S
            ),
            "UploadLocations": upload,
            "StreamLocation": watch,
            "DriverSession": session,
            "SendCommand+GetCommandStatus": offer,
            "Health": lambda: health_status(chaos.process.target, DEADLINE_S),
            "Health (admin port)": lambda: health_status(chaos.admin, DEADLINE_S),
        }
        end = time.monotonic() + HANG_S
        while time.monotonic() < end:
            await asyncio.gather(*(timed_call(call, late, name) for name, call in calls.items()))


async def serving_again(chaos: ChaosServer) -> float:
    """Seconds until both ports say SERVING (fails after RECOVERY_S)."""
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY_S:
        with contextlib.suppress(grpc.aio.AioRpcError):
            if (
                await health_status(chaos.process.target) == SERVING
                and await health_status(chaos.admin) == SERVING
            ):
                return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"not SERVING {RECOVERY_S} s after SIGCONT")


@pytest.fixture
async def hang_server(
    tmp_path: Path, postgres_server: PostgresServer, private_redis: RedisServer
) -> ChaosServer:
    """A server of this test alone on PostgreSQL + Redis, warmed up, baseline taken."""
    postgres_server.start()
    launcher = Launcher(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = (await create_database(postgres_server), private_redis.url)
    chaos = start_chaos_server(launcher, data_dir, "postgresql+redis", store)
    await chaos.warm_up()
    return chaos


@pytest.mark.parametrize("dependency", ["redis", "postgresql"])
async def test_a_hanging_dependency_costs_callers_only_their_deadline(
    hang_server: ChaosServer,
    postgres_server: PostgresServer,
    private_redis: RedisServer,
    dependency: str,
) -> None:
    chaos = hang_server
    if dependency == "redis":
        assert private_redis.process is not None
        pid, group = private_redis.process.pid, False
    else:
        assert postgres_server.process is not None
        pid, group = postgres_server.process.pid, True
    late: list[str] = []
    try:
        with stopped(pid, group):
            await callers_during_hang(chaos, late)
        recovered_s = await serving_again(chaos)
        print(f"\n{dependency} hang: SERVING {recovered_s:.2f} s after SIGCONT")
        assert not late, f"answers past their {DEADLINE_S} s deadline: {late}"
        await chaos.assert_unharmed()
        chaos.process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(chaos.process.wait, 15) == 0
    finally:
        chaos.process.kill()
