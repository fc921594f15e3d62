"""Webhook delivery end to end, with real `serve` subprocesses and a real (slow) HTTP receiver
in the test process: a SIGKILL of the only server in the middle of deliveries, and of one of
three replicas on one PostgreSQL + Redis while it holds endpoints, loses no event. Every
logged event reaches every endpoint at least once, and the first arrivals at each endpoint
are in log order (docs/events.md, "Delivery guarantees")."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from driver_service._gen.driver.v1 import webhooks_pb2 as wpb
from driver_service._gen.driver.v1 import webhooks_pb2_grpc as wpb_grpc
from tests.helpers.grpc_calls import online, replayed_event_ids
from tests.helpers.postgres import PostgresServer, create_database
from tests.helpers.redis import RedisServer
from tests.helpers.server_process import Launcher, ServerProcess
from tests.helpers.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

#: Plain http to 127.0.0.1 is what the receiver is: both need the operator's flag.
FLAGS = (
    "--webhook-allow-http", "--webhook-allow-private", "--webhook-timeout", "5",
    "--stale-after", "86400", "--rate-limit", "0",
)  # fmt: skip
PATHS = [f"/endpoint-{n}" for n in range(4)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Slow enough that a kill finds deliveries in flight and most of the queue ahead."""
    r = Receiver(mode="slow", slow_s=0.05).start()
    try:
        yield r
    finally:
        r.stop()


async def add_endpoints(target: str, receiver: Receiver) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = wpb_grpc.WebhookServiceStub(channel)
        for path in PATHS:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            webhook = wpb.Webhook(id=path.strip("/"), url=receiver.url_for(path))
            await stub.AddWebhook(wpb.AddWebhookRequest(webhook=webhook, secret=secret))


async def log_online_events(targets: list[str], drivers: int) -> None:
    """One fix per new driver (one `driver.online` each), spread over `targets`."""
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    try:
        for n in range(drivers):
            await online(channels[n % len(channels)], [f"d-{n:04d}"])
    finally:
        for channel in channels:
            await channel.close()


async def until(predicate: object, timeout_s: float, what: str) -> None:
    """Poll `predicate` (sync or async) until it holds; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def check_everything_arrives(receiver: Receiver, logged: list[str], timeout_s: float) -> None:
    """Every logged event at every endpoint at least once; first arrivals in log order."""

    def arrived() -> bool:
        return all({r.event_id for r in receiver.delivered_to(p)} >= set(logged) for p in PATHS)

    await until(arrived, timeout_s, "every event at every endpoint")
    for path in PATHS:
        first = list(dict.fromkeys(r.event_id for r in receiver.delivered_to(path)))
        assert first == logged, f"{path}: first arrivals out of log order"


async def test_sigkill_mid_delivery_then_restart_delivers_every_event(
    launcher: Launcher, data_dir: Path, receiver: Receiver
) -> None:
    server = launcher.start(data_dir, *FLAGS)
    await add_endpoints(server.target, receiver)
    await log_online_events([server.target], 200)
    logged = await replayed_event_ids(server.target)
    assert len(logged) == 200

    def mid_delivery() -> bool:
        busy = any(receiver.in_flight.get(p, 0) for p in PATHS)
        return busy and len(receiver.delivered()) >= 40

    await until(mid_delivery, 30, "deliveries under way")
    server.kill()  # SIGKILL with requests in flight and cursors not yet saved
    assert server.proc.returncode == -9
    before = {p: len({r.event_id for r in receiver.delivered_to(p)}) for p in PATHS}
    assert min(before.values()) < len(logged), "all delivered before the kill: nothing tested"

    restarted = launcher.start(data_dir, *FLAGS)
    assert await replayed_event_ids(restarted.target) == logged
    await check_everything_arrives(receiver, logged, 60)
    repeats = len(receiver.delivered()) - len(PATHS) * len(logged)
    print(f"\ndelivered before the kill: {before}; delivered again after it: {repeats}")


@pytest.mark.timeout(300)  # the dead replica's leases run 30 s before the others take over
async def test_three_replicas_one_killed_while_holding_endpoints_lose_nothing(
    launcher: Launcher,
    postgres_server: PostgresServer,
    private_redis: RedisServer,
    receiver: Receiver,
) -> None:
    postgres_server.start()
    store = await create_database(postgres_server)
    replicas = launcher.start_replicas(3, store, private_redis.url, *FLAGS)
    await add_endpoints(replicas[0].target, receiver)
    await log_online_events([r.target for r in replicas], 150)
    logged = await replayed_event_ids(replicas[1].target)
    assert len(logged) == 150

    # A replica that holds an endpoint's lease with a request to it in flight. Lease owners
    # start with host:pid (WebhookDelivery.owner).
    victim: list[tuple[ServerProcess, str]] = []

    async def holder_mid_request() -> bool:
        con = await asyncpg.connect(store)
        try:
            rows = await con.fetch(
                "SELECT endpoint_id, lease_owner FROM webhook_endpoints WHERE lease_owner <> ''"
            )
        finally:
            await con.close()
        for row in rows:
            pid = int(row["lease_owner"].split(":")[1])
            for replica in replicas:
                if replica.proc.pid == pid and receiver.in_flight.get(f"/{row['endpoint_id']}"):
                    victim[:] = [(replica, row["endpoint_id"])]
                    return True
        return False

    await until(holder_mid_request, 30, "a replica holding an endpoint mid-request")
    killed, held = victim[0]
    killed.kill()
    assert killed.proc.returncode == -9
    got = {r.event_id for r in receiver.delivered_to(f"/{held}")}
    assert len(got) < len(logged), "the killed replica's endpoint was already done"

    # Its leases expire (30 s) and the two others take its endpoints over.
    await check_everything_arrives(receiver, logged, 120)
    survivors = [r for r in replicas if r is not killed]
    assert all(r.proc.poll() is None for r in survivors)
    print(f"\nkilled replica pid {killed.proc.pid} holding {held}: every event delivered")
