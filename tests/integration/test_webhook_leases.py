"""Webhook leases on PostgreSQL, the SQL replicas rely on (`FOR UPDATE SKIP LOCKED`): stores on
separate connection pools of one database, as replicas have, never own one endpoint at once,
an expired lease is taken over, and a replica that lost its lease cannot move the cursor.
Then two whole deliverers on one database against a real receiver: no endpoint ever has two
requests in flight, and every event arrives, in order per endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from driver_service.adapters.http.webhook_transport import HttpxWebhookTransport
from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.adapters.postgres.webhooks import PostgresWebhookStore
from driver_service.app.evaluation import ZoneEvaluator
from driver_service.app.webhook_delivery import WebhookDelivery
from driver_service.domain import Location
from driver_service.domain.webhooks import Endpoint, RetryPolicy
from driver_service.resilience.supervision import TaskSupervisor
from tests.helpers.waiting import eventually
from tests.helpers.webhook_receiver import Receiver

S = 10**9
T0 = 1_717_200_000 * S
ENDPOINTS = 40
SECRET = "whsec_" + "A" * 43 + "="


def endpoint(i: int, url: str = "https://example.com/hook") -> Endpoint:
    return Endpoint(f"ep-{i:02d}", url, ("*",), (), (), SECRET, T0)


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[list[PostgresRepository]]:
    """Three repositories of one database, each with its own pool: three replicas' views."""
    repos = [
        await PostgresRepository.open(
            postgres_url, min_size=1, max_size=4, evaluator=ZoneEvaluator()
        )
        for _ in range(3)
    ]
    try:
        yield repos
    finally:
        for repo in repos:
            await repo.close()


async def test_concurrent_claims_never_share_an_endpoint(
    replicas: list[PostgresRepository],
) -> None:
    stores = [PostgresWebhookStore(r) for r in replicas]
    for i in range(ENDPOINTS):
        await stores[0].add_endpoint(endpoint(i))
    for round_ in range(25):
        now = T0 + round_ * S
        # Each store asks for more than its share, all at once: the locks decide.
        claims = await asyncio.gather(
            *(
                s.claim_endpoints(f"owner-{n}", now, now + 30 * S, 1, 25)
                for n, s in enumerate(stores)
            )
        )
        owned = [{e.endpoint_id for e in claim} for claim in claims]
        everything = set().union(*owned)
        assert sum(len(o) for o in owned) == len(everything), f"round {round_}: shared {owned}"
        assert len(everything) == ENDPOINTS  # every endpoint claimed by someone
        # While the leases run, nobody claims any of them again.
        for n, store in enumerate(stores):
            assert await store.claim_endpoints(f"other-{n}", now + S, now + 30 * S, 1, 99) == []
        for n, store in enumerate(stores):
            for endpoint_id in owned[(n + 1) % len(stores)]:  # someone else's: no effect
                await store.release(endpoint_id, f"owner-{n}")
            assert await store.claim_endpoints("late", now + S, now + 30 * S, 1, 99) == []
        for n, store in enumerate(stores):
            for endpoint_id in owned[n]:
                await store.release(endpoint_id, f"owner-{n}")


async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced(
    replicas: list[PostgresRepository],
) -> None:
    a, b = PostgresWebhookStore(replicas[0]), PostgresWebhookStore(replicas[1])
    await a.add_endpoint(endpoint(1))
    [held] = await a.claim_endpoints("a", T0, T0 + 30 * S, 10, 10)
    assert await b.claim_endpoints("b", T0 + 29 * S, T0 + 59 * S, 10, 10) == []
    # a stops renewing (it died or stalled): once its lease has expired, b takes the endpoint
    # over, from the cursor a last saved.
    assert await a.save_progress(replace(held, cursor=3), "a", T0 + 30 * S)
    [taken] = await b.claim_endpoints("b", T0 + 31 * S, T0 + 61 * S, 10, 10)
    assert (taken.endpoint_id, taken.cursor) == (held.endpoint_id, 3)
    # a comes back: every write it tries names it as the owner, and is refused.
    assert not await a.save_progress(replace(held, cursor=7), "a", T0 + 62 * S)
    await a.release(held.endpoint_id, "a")
    assert await a.claim_endpoints("a", T0 + 32 * S, T0 + 62 * S, 10, 10) == []
    assert await b.save_progress(replace(taken, cursor=5), "b", T0 + 62 * S)
    assert (await a.get_endpoint(held.endpoint_id)).cursor == 5


async def test_two_deliverers_never_deliver_to_one_endpoint_at_once(
    replicas: list[PostgresRepository],
) -> None:
    receiver = Receiver(mode="slow", slow_s=0.01).start()
    stores = [PostgresWebhookStore(r) for r in replicas[:2]]  # the third stays out
    paths = [f"/ep-{i}" for i in range(6)]
    for i, path in enumerate(paths):
        await stores[0].add_endpoint(endpoint(i, receiver.url_for(path)))
    transports = [HttpxWebhookTransport(allow_private=True) for _ in stores]
    deliverers = [
        WebhookDelivery(
            store,
            repo,
            transport,
            TaskSupervisor(),
            RetryPolicy(timeout_s=2.0),
            allow_http=True,
            poll_s=0.02,
            lease_s=30.0,
            owner=f"replica-{n}",
        )
        for n, (store, repo, transport) in enumerate(
            zip(stores, replicas[:2], transports, strict=True)
        )
    ]
    try:
        for deliverer in deliverers:
            deliverer.start()
        # Events logged through either replica, in batches, while both deliver.
        for batch in range(8):
            repo = replicas[batch % 2]
            await repo.record_locations(
                [Location(f"d-{batch}-{k}", 52.0, 13.0, 0.0, 0.0, T0 + k) for k in range(10)]
            )
        logged = [str(e.event_id) for e in await replicas[0].read_events(0, 10_000)]
        assert len(logged) == 80

        def everything_arrived() -> bool:
            return all({r.event_id for r in receiver.delivered_to(p)} >= set(logged) for p in paths)

        await eventually(everything_arrived, 60, "every event at every endpoint")
    finally:
        for deliverer in deliverers:
            await deliverer.close()
        for transport in transports:
            await transport.close()
        receiver.stop()
    assert receiver.most_in_flight == dict.fromkeys(paths, 1)
    for path in paths:
        arrivals = [r.event_id for r in receiver.delivered_to(path)]
        first = list(dict.fromkeys(arrivals))  # first arrival of each, in arrival order
        assert first == logged, f"{path}: out of order"
