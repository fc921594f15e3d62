"""What a handler and its log lines read of the current call (request id, caller) on a real
server, and that the pipeline pays one ContextVar set per call for it, not three."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from driver_service.interceptors import (
    AuthPolicy,
    CallPipeline,
    MethodRule,
    RequestIdFilter,
    current_principal,
    current_request_id,
)
from driver_service.security import TokenIssuer, TokenValidator

SECRET = b"call-scope-test-secret-32-bytes-long"
METHOD = "/test.Scope/Get"


@dataclass
class Seen:
    """What the handler saw, per call."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    records: list[logging.LogRecord] = field(default_factory=list)


class _Keep(logging.Handler):
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.records.append(record)


@dataclass
class Env:
    channel: grpc.aio.Channel
    seen: Seen
    token: str


@pytest.fixture(params=["table", "interceptor"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """A server with one method behind the pipeline, registered as `serve` registers its
    services (one table) or as a grpc.aio interceptor."""
    seen = Seen()
    logger = logging.getLogger("test.call_scope")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    keep = _Keep(seen)
    logger.addHandler(keep)
    before = contextvars.copy_context()

    async def get(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        new = [var for var in contextvars.copy_context() if var not in before]
        logger.info("in the handler")

        async def child() -> tuple[str, Any]:
            logger.info("in a task of the handler")
            return current_request_id(), current_principal()

        seen.calls.append(
            {
                "request_id": current_request_id(),
                "principal": current_principal(),
                "child": await asyncio.create_task(child()),
                "context_vars_set": len(new),
            }
        )
        return b""

    handler = grpc.unary_unary_rpc_method_handler(get)
    policy = AuthPolicy(TokenValidator.from_secret(SECRET), {METHOD: MethodRule("drivers:read")})
    pipeline = CallPipeline(auth=policy)
    if request.param == "table":
        server = grpc.aio.server()
        pipeline.around(server).add_registered_method_handlers("test.Scope", {"Get": handler})
    else:
        server = grpc.aio.server(interceptors=[pipeline])
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Scope", {"Get": handler}),)
        )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    token = TokenIssuer.from_secret(SECRET).issue_service(["drivers:read"], subject="svc-a")
    try:
        yield Env(channel, seen, token)
    finally:
        await channel.close()
        await server.stop(0)
        logger.removeHandler(keep)


async def call(env: Env, request_id: str) -> None:
    get = env.channel.unary_unary(METHOD)
    metadata = (("authorization", f"Bearer {env.token}"), ("x-request-id", request_id))
    await get(b"", metadata=metadata)


async def test_handlers_and_log_lines_read_the_calls_own_id_and_caller(env: Env) -> None:
    await asyncio.gather(*(call(env, f"rid-{n}") for n in range(5)))
    assert sorted(c["request_id"] for c in env.seen.calls) == [f"rid-{n}" for n in range(5)]
    for seen in env.seen.calls:
        assert seen["principal"].subject == "svc-a"
        assert seen["child"] == (seen["request_id"], seen["principal"])
    ids = sorted(r.request_id for r in env.seen.records)  # type: ignore[attr-defined]
    assert ids == sorted(f"rid-{n}" for n in range(5) for _ in range(2))
    assert current_request_id() == "-"
    assert current_principal() is None


async def test_one_context_variable_is_set_per_call(env: Env) -> None:
    await call(env, "rid-x")
    await call(env, "rid-y")
    assert [c["context_vars_set"] for c in env.seen.calls] == [1, 1]
