"""WebhookDelivery's wake-ups: logged events cost no look at the store while there is no
endpoint (the default), and an endpoint made here is looked for at once."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest

from driver_service.app.webhook_delivery import WebhookDelivery
from driver_service.domain.events import Event, EventType, LoggedEvent
from driver_service.domain.webhooks import Endpoint
from driver_service.resilience.supervision import TaskSupervisor
from tests.helpers.waiting import eventually

LOGGED = [LoggedEvent(1, 1_000, Event(EventType.DRIVER_ONLINE, "d1", 1_000))]
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


class Store:
    """Endpoints without work (the claims find none), counted; `hold` keeps a listing of
    the endpoints in flight."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        self.claims = 0
        self.hold: asyncio.Event | None = None

    async def last_event_id(self) -> int:
        return 1

    async def list_endpoints(self) -> list[Endpoint]:
        listed = list(self.endpoints)
        if self.hold is not None:
            await self.hold.wait()
        return listed

    async def dead_letter_count(self) -> int:
        return 0

    async def claim_endpoints(
        self, owner: str, now_ns: int, lease_until_ns: int, head: int, limit: int
    ) -> list[Endpoint]:
        self.claims += 1
        return []


@pytest.fixture
async def store_and_delivery() -> AsyncIterator[tuple[Store, WebhookDelivery]]:
    store = Store()
    supervisor = TaskSupervisor()
    delivery = WebhookDelivery(store, store, store, supervisor, poll_s=3600.0)  # type: ignore[arg-type]
    delivery.start()
    try:
        yield store, delivery
    finally:
        await delivery.close()
        await supervisor.close()


async def settle() -> None:
    await asyncio.sleep(0.2)  # several claim intervals


async def test_logged_events_wake_nothing_while_there_is_no_endpoint(
    store_and_delivery: tuple[Store, WebhookDelivery],
) -> None:
    store, delivery = store_and_delivery
    delivery.notify(LOGGED)  # nothing known yet: it looks
    await eventually(lambda: store.claims == 1, 5, "the first look")
    for _ in range(5):
        delivery.notify(LOGGED)
        await settle()
    assert store.claims == 1
    store.endpoints = [Endpoint("e1", "https://hooks.example.com/x", (), (), (), SECRET, 1)]
    delivery.notify()  # an endpoint was made here: look at once
    await eventually(lambda: store.claims == 2, 5, "a look after the change")
    delivery.notify(LOGGED)
    await eventually(lambda: store.claims == 3, 5, "a look for the logged events")


async def test_an_endpoint_made_during_a_look_is_not_forgotten(
    store_and_delivery: tuple[Store, WebhookDelivery],
) -> None:
    """A listing that began before the endpoint was made (and so found none) does not
    make logged events wake nothing."""
    store, delivery = store_and_delivery
    store.hold = asyncio.Event()
    delivery.notify(LOGGED)
    await asyncio.sleep(0.05)  # the listing is in flight, and finds no endpoint
    store.endpoints = [Endpoint("e1", "https://hooks.example.com/x", (), (), (), SECRET, 1)]
    delivery.notify()
    store.hold.set()
    await eventually(lambda: store.claims == 2, 5, "the looks")
    await settle()
    delivery.notify(LOGGED)
    await eventually(lambda: store.claims == 3, 5, "a look for the logged events")
