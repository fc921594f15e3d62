"""A real driver-service server in-process on port 0, built exactly as production builds it,
with raw generated stubs (exact wire behaviour) and the client library pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.client import DriverClient
from driver_service.server.composition import build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server


@dataclass
class ServerBox:
    """The running server and whether a test already stopped it (stop must run once)."""

    running: RunningServer
    settings: ServerSettings
    stopped: bool = False

    async def stop(self, grace_s: float = 0) -> None:
        if not self.stopped:
            self.stopped = True
            await self.running.stop(grace_s)


@pytest.fixture
async def server_box(tmp_path: Path) -> AsyncIterator[ServerBox]:
    settings = ServerSettings(
        listen="127.0.0.1:0", admin_listen="127.0.0.1:0", data_dir=tmp_path, insecure=True
    )
    services = await build_services(settings)
    running = await start_server(settings, services)
    box = ServerBox(running, settings)
    try:
        yield box
    finally:
        await box.stop(0)


@pytest.fixture
def server(server_box: ServerBox) -> RunningServer:
    return server_box.running


@pytest.fixture
def stop_server(server_box: ServerBox) -> Callable[[float], Awaitable[None]]:
    """Stop the server inside a test (e.g. to reopen its SQLite file); teardown skips it."""
    return server_box.stop


@pytest.fixture
def sqlite_path(server_box: ServerBox) -> Path:
    return server_box.settings.sqlite_path()


@pytest.fixture
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.DriverServiceStub:
    return pb_grpc.DriverServiceStub(channel)


@pytest.fixture
async def client(target: str) -> AsyncIterator[DriverClient]:
    async with DriverClient(target) as c:
        yield c


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store on each kind the server supports: a SQLite file, or a private PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / "drivers.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
