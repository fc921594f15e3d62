"""A background task the service cannot work without fails: health stops saying SERVING at
once, on the main and the admin port, and the server is told to stop (serve exits 70)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service.resilience.supervision import Policy
from driver_service.server.running import RunningServer
from tests.helpers.waiting import eventually

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="driver.v1.DriverService"), timeout=1
        )
    return int(reply.status)


async def test_a_fatal_task_failure_turns_health_and_asks_the_server_to_stop(
    server: RunningServer,
) -> None:
    async def broken() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("a bug in a task the service needs")

    assert server.admin is not None
    server.supervisor.start("needed", broken, Policy.FATAL)
    await asyncio.wait_for(server.fatal.wait(), 2)
    statuses: list[int] = []

    async def poll() -> None:
        statuses[:] = [await _status(server.port), await _status(server.admin.port)]

    deadline = asyncio.get_running_loop().time() + 2
    while statuses != [NOT_SERVING, NOT_SERVING]:
        assert asyncio.get_running_loop().time() < deadline, statuses
        await poll()
    problem = await server.health_problem(1.0)
    assert problem == "background task needed failed"


async def test_a_restartable_task_failure_leaves_health_serving(server: RunningServer) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("transient")
        await asyncio.Event().wait()

    server.supervisor.start("flaky", flaky, Policy.RESTART)
    await eventually(lambda: runs == 2, 2, "the task to be restarted")
    assert not server.fatal.is_set()
    assert await server.health_problem(1.0) is None


async def test_health_follows_the_published_state_not_the_monitors_memory(
    server: RunningServer,
) -> None:
    """A monitor restarted while NOT_SERVING was published (or anything else that published
    it) must still turn health back to SERVING once everything works."""
    await server.set_serving(False)
    assert await _status(server.port) == NOT_SERVING
    await eventually(lambda: server.serving, 3, "health to be SERVING again")
    assert await _status(server.port) == health_pb2.HealthCheckResponse.SERVING
