"""The fault-injection tier's fixtures: one server subprocess per backend for the storms of a
module (tests.helpers.chaos_server), warmed up before its first storm."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from tests.helpers.chaos_server import ChaosServer, start_chaos_server
from tests.helpers.postgres import PostgresServer, create_database
from tests.helpers.redis import RedisServer
from tests.helpers.server_process import Launcher

BACKENDS = ("sqlite", "postgresql+redis")


@pytest.fixture(scope="module", params=BACKENDS)
def chaos_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChaosServer]:
    """One server per backend for a module's storms (each storm checks it stayed unharmed;
    a fresh server per storm would mostly measure start-up)."""
    backend: str = request.param
    tmp = tmp_path_factory.mktemp("chaos")
    data_dir = tmp / "data"
    data_dir.mkdir()
    launcher = Launcher(tmp)
    with contextlib.ExitStack() as stack:
        stack.callback(launcher.kill_all)
        store = None
        if backend != "sqlite":
            postgres: PostgresServer = request.getfixturevalue("postgres_server")
            postgres.start()
            redis = RedisServer.create()
            stack.callback(redis.destroy)
            redis.start()
            store = (asyncio.run(create_database(postgres)), redis.url)
        yield start_chaos_server(launcher, data_dir, backend, store)


@pytest.fixture
async def chaos(chaos_server: ChaosServer) -> ChaosServer:
    """The module's server, warmed up and with its baseline taken."""
    await chaos_server.warm_up()
    return chaos_server
