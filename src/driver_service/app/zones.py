"""ZoneAdmin: the zone operations behind ZoneService, over the store's ZoneRepository.

Validation is the domain's (domain/zones.py: every failure says what is wrong); ids left
empty are generated (`z-` and 16 hex digits). A change reaches every replica's evaluator
through the stored zones version (app/evaluation.py): it counts from the next update.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from driver_service.domain import InvalidInput
from driver_service.domain.zones import Zone, validate_zone_id
from driver_service.ports import ZoneRepository

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class ZoneAdmin:
    def __init__(self, zones: ZoneRepository) -> None:
        self._zones = zones

    async def create(self, zone: Zone) -> Zone:
        return await self._zones.create_zone(zone, time.time_ns())

    @staticmethod
    def new_zone_id() -> str:
        return f"z-{uuid.uuid4().hex[:16]}"

    async def get(self, zone_id: str) -> Zone:
        return await self._zones.get_zone(validate_zone_id(zone_id))

    async def update(self, zone: Zone, expected_version: int) -> Zone:
        return await self._zones.update_zone(zone, expected_version, time.time_ns())

    async def delete(self, zone_id: str, expected_version: int) -> None:
        await self._zones.delete_zone(validate_zone_id(zone_id), expected_version, time.time_ns())

    async def list(
        self, page_size: int, page_token: str, labels: Iterable[str]
    ) -> tuple[list[Zone], str]:
        """A page of zones with every one of `labels`, ordered by id, and the next page's
        token ('' on the last page). The token is the last id of the page."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidInput(f"page_size must be between 0 and {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        if page_token:
            validate_zone_id(page_token, "page_token")
        wanted = frozenset(labels)
        page: list[Zone] = []
        after = page_token
        while len(page) < size:
            batch = await self._zones.list_zones(after, size)
            page.extend(z for z in batch if wanted <= set(z.labels))
            if len(batch) < size:
                return page[:size], ""
            after = batch[-1].zone_id
        page = page[:size]
        return page, page[-1].zone_id
