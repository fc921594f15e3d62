"""Deny by default on a real server: a method the rules table does not name is refused
PERMISSION_DENIED before its handler runs, whatever scopes the token carries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.api import DriverServicer
from driver_service.api.rules import RULES
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.interceptors import AuthPolicy, server_interceptors
from driver_service.security import TokenIssuer, TokenValidator
from driver_service.security.tokens import SCOPE_DISPATCH, SCOPE_READ, SCOPE_WRITE

SECRET = b"integration-test-secret-of-32-bytes!!"
GET_DRIVER = "/driver.v1.DriverService/GetDriver"


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[pb_grpc.DriverServiceStub]:
    repository = await SqliteRepository.open(tmp_path / "store.sqlite3")
    tracking = DriverTracking(repository, MemoryBus())
    await tracking.start()
    rules = {path: rule for path, rule in RULES.items() if path != GET_DRIVER}
    policy = AuthPolicy(TokenValidator.from_secret(SECRET), rules)
    server = grpc.aio.server(interceptors=server_interceptors(policy))
    pb_grpc.add_DriverServiceServicer_to_server(DriverServicer(tracking), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.DriverServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        await tracking.close()


async def test_a_method_missing_from_the_table_is_denied(stub: pb_grpc.DriverServiceStub) -> None:
    token = TokenIssuer.from_secret(SECRET).issue_service([SCOPE_READ, SCOPE_WRITE, SCOPE_DISPATCH])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetDriver(
            pb.GetDriverRequest(driver_id="d1"), metadata=(("authorization", f"Bearer {token}"),)
        )
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
