"""driver.v1.EventService over grpc.aio: WatchEvents, replay from the log then follow.

Filters are checked first (an unknown type pattern or a malformed id: INVALID_ARGUMENT).
A driver token watches only its own driver: its `driver_ids` may name only itself (the
rule in api/rules.py refuses others) and an empty list means its own driver, not all.
An `after_id` older than the retained log: OUT_OF_RANGE saying the oldest id available.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc
from driver_service.api.errors import AbortOnDomainError, abort_with
from driver_service.app.events import EventFeed
from driver_service.domain import DomainError, validate_driver_id
from driver_service.domain.events import LoggedEvent, parse_type_filter
from driver_service.domain.zones import validate_zone_id
from driver_service.interceptors.auth import current_principal
from driver_service.wire import ns_to_timestamp


def event_to_pb(logged: LoggedEvent) -> epb.Event:
    e = logged.event
    msg = epb.Event(
        id=logged.event_id,
        type=e.type.value,
        driver_id=e.driver_id,
        zone_id=e.zone_id,
        time=ns_to_timestamp(e.at_ns),
        recorded_at=ns_to_timestamp(logged.recorded_at_ns),
        old_status="" if e.old_status is None else e.old_status.value,
        new_status="" if e.new_status is None else e.new_status.value,
        zone_deleted=e.zone_deleted,
        zone_version=e.zone_version,
    )
    if e.location is not None:
        loc = e.location
        msg.location.CopyFrom(
            epb.EventLocation(
                latitude=loc.latitude,
                longitude=loc.longitude,
                speed_mps=loc.speed_mps,
                heading_degrees=loc.heading_degrees,
            )
        )
    return msg


class EventServicer(epb_grpc.EventServiceServicer):
    def __init__(self, feed: EventFeed) -> None:
        self._feed = feed

    async def WatchEvents(  # noqa: N802 - generated method name
        self, request: epb.WatchEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[epb.Event]:
        try:
            types = parse_type_filter(request.types)
            zones = frozenset(validate_zone_id(z) for z in request.zone_ids)
            drivers = frozenset(validate_driver_id(d) for d in request.driver_ids)
        except DomainError as error:
            await abort_with(context, error)
        principal = current_principal()
        own = None if principal is None else principal.driver_id
        if own is not None:
            drivers = frozenset({own})  # the rule refused any other id already

        def match(logged: LoggedEvent) -> bool:
            e = logged.event
            return (
                e.type in types
                and (not zones or e.zone_id in zones)
                and (not drivers or e.driver_id in drivers)
            )

        after = request.after_id if request.HasField("after_id") else None
        async with AbortOnDomainError(context):  # EventsExpired: OUT_OF_RANGE
            async for logged in self._feed.watch(after, match, replay_only=request.replay_only):
                yield event_to_pb(logged)
