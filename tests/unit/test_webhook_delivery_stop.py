"""Stopping webhook delivery is prompt and bounded, whatever the loop is doing when the stop
comes: waking up for new events, or a delivery stuck in a request or in releasing its lease."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from driver_service.app.webhook_delivery import WebhookDelivery
from driver_service.domain.events import Event, EventType, LoggedEvent
from driver_service.domain.webhooks import Endpoint
from driver_service.resilience.supervision import TaskSupervisor

#: Far more than a prompt stop needs, far less than a shutdown grace.
PROMPT_S = 1.5


class NoEndpoints:
    """A store without endpoints (the common case) and a log whose head keeps moving."""

    def __init__(self) -> None:
        self.head = 0

    async def last_event_id(self) -> int:
        await asyncio.sleep(0)
        return self.head

    async def read_events(self, after_id: int, limit: int) -> list[LoggedEvent]:
        await asyncio.sleep(0)
        return []

    async def list_endpoints(self) -> list[Endpoint]:
        await asyncio.sleep(0)
        return []

    async def dead_letter_count(self) -> int:
        return 0

    async def claim_endpoints(
        self, owner: str, now_ns: int, lease_until_ns: int, head: int, limit: int
    ) -> list[Endpoint]:
        await asyncio.sleep(0)
        return []


class Stuck(NoEndpoints):
    """One endpoint with work whose POST never answers and whose lease release hangs (a
    store busy or away at shutdown)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = 10
        secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
        self.endpoint = Endpoint("e1", "https://hooks.example.com/x", (), (), (), secret, 0)
        self.posting = asyncio.Event()

    async def claim_endpoints(
        self, owner: str, now_ns: int, lease_until_ns: int, head: int, limit: int
    ) -> list[Endpoint]:
        return [self.endpoint]

    async def next_replay(self, endpoint_id: str) -> None:
        return None

    async def read_events(self, after_id: int, limit: int) -> list[LoggedEvent]:
        return [LOGGED] if after_id < 1 else []

    async def release(self, endpoint_id: str, owner: str) -> None:
        await asyncio.Event().wait()

    async def post(self, url: str, headers: object, body: bytes, timeout_s: float) -> int:
        self.posting.set()
        await asyncio.Event().wait()
        return 200

    async def close(self) -> None:
        return None


LOGGED = LoggedEvent(1, 1_000, Event(EventType.DRIVER_ONLINE, "d1", 1_000))


async def _stops_within(delivery: WebhookDelivery, bound_s: float) -> float:
    started = time.monotonic()
    closing = asyncio.ensure_future(delivery.close())
    done, _ = await asyncio.wait({closing}, timeout=bound_s)
    assert done, f"delivery still stopping after {bound_s} s"
    closing.result()
    return time.monotonic() - started


@pytest.mark.parametrize("yields", range(8))
async def test_stop_while_being_woken_is_prompt(yields: int) -> None:
    """A stop that lands just as the loop is woken (events logged) is not lost: Python 3.11's
    wait_for returned the wake-up and swallowed the cancellation, and the loop ran on."""
    store = NoEndpoints()
    supervisor = TaskSupervisor()
    delivery = WebhookDelivery(store, store, store, supervisor, poll_s=30.0)  # type: ignore[arg-type]
    delivery.start()
    for _ in range(20):
        await asyncio.sleep(0)
    store.head += 1
    delivery.notify([LoggedEvent(store.head, 1, Event(EventType.DRIVER_ONLINE, "d1", 1))])
    for _ in range(yields):
        await asyncio.sleep(0)
    await _stops_within(delivery, PROMPT_S)
    await supervisor.close()


async def test_stop_with_a_delivery_stuck_in_flight_is_bounded() -> None:
    """A POST that never answers and a lease release that hangs cannot hold shutdown up."""
    store = Stuck()
    supervisor = TaskSupervisor()
    delivery = WebhookDelivery(
        store,  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        supervisor,
        allow_http=True,
        poll_s=0.01,
    )
    delivery.start()
    await asyncio.wait_for(store.posting.wait(), 5)
    await _stops_within(delivery, PROMPT_S)
    await supervisor.close()
