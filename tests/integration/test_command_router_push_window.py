"""A session that ends between the claim of its driver's commands and their push: the sender
must hear QUEUED (the command went back to the queue), never a DELIVERED that did not happen.
Real Redis, two routers as on two replicas; the receiving replica's sessions are a SessionHost
whose push finds the session gone, which is that moment."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.adapters.redis.bus import RedisBus
from driver_service.adapters.redis.command_router import RedisCommandRouter
from driver_service.adapters.redis.connection import create_redis_client
from driver_service.dispatch.domain.commands import CommandState
from tests.helpers.redis import RedisServer

OFFER = pb.ServerCommand(ride_offer=pb.RideOffer(offer_id="c1", pickup_address="Alexanderplatz 1"))


class Sessions:
    """This process's sessions as the router sees them."""

    def __init__(self, *, present: bool, pushes: bool) -> None:
        self.session_listeners: list[Callable[[str], None]] = []
        self.present, self.pushes = present, pushes
        self.pushed: list[object] = []

    def has_session(self, driver_id: str) -> bool:
        return self.present

    def push_command(self, driver_id: str, command: object) -> bool:
        if self.pushes:
            self.pushed.append(command)
        return self.pushes


async def test_a_session_gone_at_the_push_is_heard_as_queued_not_delivered(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    redis_server.start()
    client = create_redis_client(redis_server.url)
    bus = RedisBus(client, prefix=redis_prefix, close_client=True)
    bus.start()
    sender = RedisCommandRouter(
        client, bus, Sessions(present=False, pushes=False), prefix=redis_prefix
    )
    ending = Sessions(present=True, pushes=False)
    holder = RedisCommandRouter(client, bus, ending, prefix=redis_prefix)
    heard: list[bytes] = []
    try:
        holder.on_session("d1")
        while not await sender.connected("d1"):
            await asyncio.sleep(0.005)
        outcome = await bus.subscribe_channel(f"{redis_prefix}offer:c1".encode(), heard.append)
        sent = await sender.send("d1", "c1", OFFER, is_offer=True, ttl_s=10)
        assert sent.state is CommandState.QUEUED
        assert await sender.queued("d1") == 1
        got = await sender.get("c1")
        assert got.state is CommandState.QUEUED
        outcome.close()
        assert b"DELIVERED" not in heard, heard
        assert b"QUEUED" in heard, heard

        # The next session that takes the push gets it, and then the sender hears DELIVERED.
        delivered = asyncio.Event()
        outcome = await bus.subscribe_channel(
            f"{redis_prefix}offer:c1".encode(),
            lambda data: data == b"DELIVERED" and delivered.set(),
        )
        ending.pushes = True
        holder.on_session("d1")
        await asyncio.wait_for(delivered.wait(), 5)
        outcome.close()
        assert (await sender.get("c1")).state is CommandState.DELIVERED
        assert ending.pushed == [OFFER]
    finally:
        await holder.close()
        await sender.close()
        await bus.close()
