"""driver.v1.ZoneService over grpc.aio: decode, call ZoneAdmin, encode, map errors.

Invalid zones answer INVALID_ARGUMENT saying what is wrong; an unknown (or deleted) zone
NOT_FOUND; an id ever used before ALREADY_EXISTS; an `expected_version` that is not the
stored one FAILED_PRECONDITION (the caller must read the zone again: retrying the same
request can never succeed, so not ABORTED).
"""

from __future__ import annotations

from typing import Any

import grpc

from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service._gen.driver.v1 import zones_pb2_grpc as zpb_grpc
from driver_service.api.errors import AbortOnDomainError
from driver_service.app.zones import ZoneAdmin
from driver_service.domain import InvalidInput
from driver_service.domain.zones import Circle, PolygonShape, Shape, Zone
from driver_service.wire import ns_to_timestamp


def zone_from_pb(msg: zpb.Zone, zone_id: str) -> Zone:
    """A domain zone from the request's (version and times are the store's)."""
    kind = msg.WhichOneof("shape")
    shape: Shape
    if kind == "geojson":
        shape = PolygonShape(msg.geojson)
    elif kind == "circle":
        c = msg.circle
        shape = Circle(c.latitude, c.longitude, c.radius_m)
    else:
        raise InvalidInput("zone needs a shape: geojson (a Polygon or MultiPolygon) or circle")
    dwell_ns = msg.dwell.seconds * 10**9 + msg.dwell.nanos if msg.HasField("dwell") else 0
    if dwell_ns < 0:
        raise InvalidInput("dwell must not be negative")
    return Zone(zone_id, msg.name, tuple(msg.labels), shape, dwell_ns)


def zone_to_pb(zone: Zone) -> zpb.Zone:
    msg = zpb.Zone(
        id=zone.zone_id,
        name=zone.name,
        labels=zone.labels,
        version=zone.version,
        created_at=ns_to_timestamp(zone.created_at_ns),
        updated_at=ns_to_timestamp(zone.updated_at_ns),
    )
    shape = zone.shape
    if isinstance(shape, Circle):
        msg.circle.CopyFrom(zpb.Circle(latitude=shape.latitude, longitude=shape.longitude,
                                       radius_m=shape.radius_m))  # fmt: skip
    else:
        msg.geojson = shape.geojson
    if zone.dwell_ns:
        msg.dwell.seconds, msg.dwell.nanos = divmod(zone.dwell_ns, 10**9)
    return msg


class ZoneServicer(zpb_grpc.ZoneServiceServicer):
    """The zone RPCs; every rule lives in ZoneAdmin and the domain, not here."""

    def __init__(self, zones: ZoneAdmin) -> None:
        self._zones = zones

    async def CreateZone(  # noqa: N802 - generated method name
        self, request: zpb.CreateZoneRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> zpb.Zone:
        async with AbortOnDomainError(context):
            zone_id = request.zone.id or self._zones.new_zone_id()
            zone = await self._zones.create(zone_from_pb(request.zone, zone_id))
        return zone_to_pb(zone)

    async def GetZone(  # noqa: N802
        self, request: zpb.GetZoneRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> zpb.Zone:
        async with AbortOnDomainError(context):
            zone = await self._zones.get(request.id)
        return zone_to_pb(zone)

    async def ListZones(  # noqa: N802
        self, request: zpb.ListZonesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> zpb.ListZonesResponse:
        async with AbortOnDomainError(context):
            zones, token = await self._zones.list(
                request.page_size, request.page_token, request.labels
            )
        return zpb.ListZonesResponse(zones=[zone_to_pb(z) for z in zones], next_page_token=token)

    async def UpdateZone(  # noqa: N802
        self, request: zpb.UpdateZoneRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> zpb.Zone:
        async with AbortOnDomainError(context):
            zone = zone_from_pb(request.zone, request.zone.id)
            updated = await self._zones.update(zone, request.expected_version)
        return zone_to_pb(updated)

    async def DeleteZone(  # noqa: N802
        self, request: zpb.DeleteZoneRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> zpb.DeleteZoneResponse:
        async with AbortOnDomainError(context):
            await self._zones.delete(request.id, request.expected_version)
        return zpb.DeleteZoneResponse()
