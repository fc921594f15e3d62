"""WebhookAdmin: registering, listing, removing, testing webhook endpoints, their secrets and
their dead letters (the WebhookService RPCs); delivery itself is WebhookDelivery's."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence

from driver_service.app.webhook_delivery import Outcome, WebhookDelivery
from driver_service.domain.errors import InvalidInput
from driver_service.domain.webhooks import (
    DeadLetter,
    Endpoint,
    secret_key,
    test_payload,
    validate_filters,
    validate_url,
)
from driver_service.ports import EventLog, WebhookStore, WebhookTransport

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
MAX_PAGE = 1000
#: The longest overlap a rotated-out secret may keep signing.
MAX_OVERLAP_S = 7 * 86_400


def validate_endpoint_id(value: str) -> str:
    if not _ID.match(value):
        raise InvalidInput(
            "webhook id: 1-64 letters, digits and . _ : @ -, starting with a letter or digit"
        )
    return value


class WebhookAdmin:
    def __init__(
        self,
        store: WebhookStore,
        log: EventLog,
        transport: WebhookTransport,
        delivery: WebhookDelivery,
        *,
        allow_http: bool = False,
    ) -> None:
        self._store = store
        self._log = log
        self._transport = transport
        self._delivery = delivery
        self._allow_http = allow_http

    async def add(
        self,
        endpoint_id: str,
        url: str,
        secret: str,
        types: Sequence[str] = (),
        zone_ids: Sequence[str] = (),
        driver_ids: Sequence[str] = (),
        after_id: int | None = None,
    ) -> Endpoint:
        """Register an endpoint; it gets the events logged after `after_id` (None: from now
        on). The secret is given by the caller (the CLI makes one): the API never returns it."""
        endpoint_id = validate_endpoint_id(endpoint_id or f"wh-{secrets.token_hex(6)}")
        validate_url(url, self._allow_http)
        secret_key(secret)
        kinds, zones, drivers = validate_filters(tuple(types), tuple(zone_ids), tuple(driver_ids))
        await self._transport.check_target(url)
        cursor = await self._log.last_event_id() if after_id is None else after_id
        endpoint = Endpoint(
            endpoint_id, url, kinds, zones, drivers, secret, time.time_ns(), cursor=cursor
        )
        await self._store.add_endpoint(endpoint)
        self._delivery.notify()
        return endpoint

    async def endpoints(self) -> list[Endpoint]:
        return await self._store.list_endpoints()

    async def get(self, endpoint_id: str) -> Endpoint:
        return await self._store.get_endpoint(endpoint_id)

    async def remove(self, endpoint_id: str) -> None:
        await self._store.remove_endpoint(endpoint_id)

    async def set_paused(self, endpoint_id: str, paused: bool) -> Endpoint:
        endpoint = await self._store.set_paused(endpoint_id, paused)
        self._delivery.notify()
        return endpoint

    async def rotate_secret(self, endpoint_id: str, secret: str, overlap_s: float) -> Endpoint:
        """Sign with `secret` from now on, and with the current one too for `overlap_s`."""
        secret_key(secret)
        if not 0 <= overlap_s <= MAX_OVERLAP_S:
            raise InvalidInput(f"overlap must be between 0 and {MAX_OVERLAP_S} seconds")
        current = await self._store.get_endpoint(endpoint_id)
        if secret == current.secret:
            raise InvalidInput("the new secret is the current one")
        until = time.time_ns() + int(overlap_s * 1e9)
        return await self._store.set_secret(endpoint_id, secret, current.secret, until)

    async def test(self, endpoint_id: str) -> Outcome:
        """One signed `webhook.test` POST now, outside the queue (its id: `test-<random>`)."""
        endpoint = await self._store.get_endpoint(endpoint_id)
        msg_id = f"test-{secrets.token_hex(8)}"
        return await self._delivery.post(
            endpoint, msg_id, test_payload(endpoint_id, time.time_ns())
        )

    async def dead_letters(
        self, endpoint_id: str, after_event_id: int, page_size: int
    ) -> list[DeadLetter]:
        size = MAX_PAGE if page_size <= 0 else min(page_size, MAX_PAGE)
        return await self._store.list_dead_letters(endpoint_id, after_event_id, size)

    async def replay(self, endpoint_id: str, event_ids: Sequence[int]) -> int:
        count = await self._store.replay_dead_letters(endpoint_id, event_ids)
        self._delivery.notify()
        return count
