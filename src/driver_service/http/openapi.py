"""The OpenAPI 3 document of the HTTP API, built from the generated protobuf descriptors so
its schemas name every field exactly as the proto3 JSON mapping does (lowerCamelCase)."""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service.app.fleet import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from driver_service.http.limits import DEFAULT_MAX_BODY_BYTES, MAX_UPLOAD_LOCATIONS

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    # 64-bit integers are JSON strings in the proto3 mapping (numbers are accepted too).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
}
_WELL_KNOWN = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
}


def _field_schema(field: FieldDescriptor, refs: dict[str, Descriptor]) -> dict[str, Any]:
    if field.message_type is not None:
        full = field.message_type.full_name
        item = _WELL_KNOWN.get(full)
        if item is None:
            refs[field.message_type.name] = field.message_type
            item = {"$ref": f"#/components/schemas/{field.message_type.name}"}
    else:
        item = dict(_SCALARS.get(field.type, {"type": "string"}))
    if field.is_repeated:
        return {"type": "array", "items": item}
    return item


def _schemas(*roots: Descriptor) -> dict[str, Any]:
    refs: dict[str, Descriptor] = {d.name: d for d in roots}
    out: dict[str, Any] = {}
    while len(out) < len(refs):
        for name, desc in sorted(refs.items()):
            if name in out:
                continue
            out[name] = {
                "type": "object",
                "properties": {f.json_name: _field_schema(f, refs) for f in desc.fields},
            }
    return dict(sorted(out.items()))


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(name)}}}


def _params(desc: Descriptor, *, path: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for f in desc.fields:
        if f.name in path or f.json_name in path:
            continue
        if f.message_type is not None and f.message_type.full_name not in _WELL_KNOWN:
            params.extend(
                {"name": f"{f.name}.{sub.name}", "in": "query", "schema": _field_schema(sub, {})}
                for sub in f.message_type.fields
            )
            continue
        params.append({"name": f.name, "in": "query", "schema": _field_schema(f, {})})
    return params


def _path_param(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": what,
    }


_ERRORS = {
    "default": {
        "description": "A gRPC status as JSON, with the HTTP status gRPC transcoding maps it to",
        **_json("Error"),
    }
}


def _http_op(
    operation_id: str,
    route: str,
    summary: str,
    response: str,
    params: list[dict[str, Any]],
    *,
    stream: bool = False,
) -> dict[str, Any]:
    """A route that mirrors no RPC: its rule is api/rules.py HTTP_RULES[route]."""
    op = _op(route, summary, response, params=params, stream=stream)
    op["operationId"] = operation_id
    op["description"] = (
        f"HTTP only: `{route}`, ruled in api/rules.py HTTP_RULES (drivers:read; never a "
        "driver token)."
    )
    return op


def _op(
    rpc: str,
    summary: str,
    response: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    ok: dict[str, Any]
    if stream:
        ok = {
            "description": f"Server-Sent Events; each `data:` is a {response} in JSON",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    else:
        ok = {"description": response, **_json(response)}
    op: dict[str, Any] = {
        "operationId": rpc.rsplit("/", 1)[-1] if not stream else rpc.replace("/", "_"),
        "summary": summary,
        "description": f"Mirrors `{rpc}`: the same auth rule (api/rules.py), validation and "
        "messages.",
        "parameters": params or [],
        "responses": {"200": ok, **_ERRORS},
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


@functools.cache
def document() -> dict[str, Any]:
    driver_id = _path_param("driver_id", "a driver id")
    zone_id = _path_param("zone_id", "a zone id")
    schemas = _schemas(
        pb.GetDriverResponse.DESCRIPTOR,
        pb.LocationUpdate.DESCRIPTOR,
        pb.UploadSummary.DESCRIPTOR,
        pb.DriverStatusChange.DESCRIPTOR,
        dpb.FindNearbyDriversResponse.DESCRIPTOR,
        hpb.TrailChunk.DESCRIPTOR,
        hpb.GetTripsResponse.DESCRIPTOR,
        hpb.GetSummaryResponse.DESCRIPTOR,
        zpb.Zone.DESCRIPTOR,
        zpb.ListZonesResponse.DESCRIPTOR,
        zpb.DeleteZoneResponse.DESCRIPTOR,
        epb.Event.DESCRIPTOR,
    )
    schemas["UploadLocationsBody"] = {
        "type": "object",
        "properties": {
            "locations": {
                "type": "array",
                "items": _ref("LocationUpdate"),
                "maxItems": MAX_UPLOAD_LOCATIONS,
            }
        },
    }
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "status": {"type": "string", "description": "the gRPC code's name"},
                    "message": {"type": "string"},
                },
            }
        },
    }
    schemas["FleetDriver"] = {
        "allOf": [
            _ref("GetDriverResponse"),
            {
                "type": "object",
                "properties": {
                    "stale": {
                        "type": "boolean",
                        "description": "no event for longer than the server's --stale-after",
                    },
                    "locatedAt": {
                        "type": "string",
                        "format": "date-time",
                        "description": "the fix time of its position (absent: never located)",
                    },
                },
            },
        ]
    }
    schemas["ListDriversResponse"] = {
        "type": "object",
        "properties": {
            "drivers": {"type": "array", "items": _ref("FleetDriver")},
            "nextPageToken": {
                "type": "string",
                "description": "pass as page_token for the next page; empty on the last",
            },
        },
    }
    schemas["FleetLocations"] = {
        "type": "object",
        "properties": {"locations": {"type": "array", "items": _ref("LocationUpdate")}},
    }
    page_q = [
        {
            "name": "page_size",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_SIZE},
            "description": f"0 or absent: {DEFAULT_PAGE_SIZE}; more than {MAX_PAGE_SIZE} "
            f"gets {MAX_PAGE_SIZE}",
        },
        {
            "name": "page_token",
            "in": "query",
            "schema": {"type": "string"},
            "description": "the nextPageToken of the previous page",
        },
    ]
    trail_q = _params(hpb.GetTrailRequest.DESCRIPTOR, path=("driver_id",))
    trips_q = _params(hpb.GetTripsRequest.DESCRIPTOR, path=("driver_id",))
    summary_q = _params(hpb.GetSummaryRequest.DESCRIPTOR, path=("driver_id",))
    paths: dict[str, Any] = {
        "/v1/drivers": {
            "get": _http_op(
                "ListDrivers",
                "GET /v1/drivers",
                "Every driver (any status or age), in pages by id",
                "ListDriversResponse",
                page_q,
            ),
        },
        "/v1/drivers/{driver_id}": {
            "get": _op(
                "driver.v1.DriverService/GetDriver",
                "A driver's status and position",
                "GetDriverResponse",
                params=[driver_id],
            ),
        },
        "/v1/drivers:nearby": {
            "get": _op(
                "driver.v1.DispatchService/FindNearbyDrivers",
                "Nearest fresh drivers",
                "FindNearbyDriversResponse",
                params=_params(dpb.FindNearbyDriversRequest.DESCRIPTOR),
            ),
        },
        "/v1/drivers/{driver_id}:uploadLocations": {
            "post": _op(
                "driver.v1.DriverService/UploadLocations",
                "Upload a batch of one driver's locations (driverId may be omitted)",
                "UploadSummary",
                params=[driver_id],
                body="UploadLocationsBody",
            ),
        },
        "/v1/locations:batchUpload": {
            "post": _op(
                "driver.v1.DriverService/UploadLocations",
                "Upload a batch of locations of any drivers",
                "UploadSummary",
                body="UploadLocationsBody",
            ),
        },
        "/v1/drivers/{driver_id}:setStatus": {
            "post": _op(
                "driver.v1.DriverService/DriverSession",
                "Change a driver's status (as a session's status_change)",
                "GetDriverResponse",
                params=[driver_id],
                body="DriverStatusChange",
            ),
        },
        "/v1/drivers/{driver_id}/trail": {
            "get": _op(
                "driver.v1.HistoryService/GetTrail",
                "A driver's fixes in a time range",
                "TrailChunk",
                params=[driver_id, *trail_q],
            ),
        },
        "/v1/drivers/{driver_id}/trips": {
            "get": _op(
                "driver.v1.HistoryService/GetTrips",
                "Trips and stops in a time range",
                "GetTripsResponse",
                params=[driver_id, *trips_q],
            ),
        },
        "/v1/drivers/{driver_id}/summary": {
            "get": _op(
                "driver.v1.HistoryService/GetSummary",
                "Distance and times in a range",
                "GetSummaryResponse",
                params=[driver_id, *summary_q],
            ),
        },
        "/v1/drivers/{driver_id}/locations:stream": {
            "get": _op(
                "driver.v1.DriverService/StreamLocation",
                "A driver's live locations (SSE `event: location`; a slow reader loses the oldest)",
                "LocationUpdate",
                params=[driver_id],
                stream=True,
            ),
        },
        "/v1/events:stream": {
            "get": _op(
                "driver.v1.EventService/WatchEvents",
                "Zone and driver events (SSE `event: event`, `id:` the event id; resume "
                "with Last-Event-ID; nothing is dropped)",
                "Event",
                params=_params(epb.WatchEventsRequest.DESCRIPTOR),
                stream=True,
            ),
        },
        "/v1/fleet:stream": {
            "get": _http_op(
                "StreamFleet",
                "GET /v1/fleet:stream",
                "Every driver's changes (SSE): `event: ready` once subscribed, and again "
                "when live locations may have been lost (then list GET /v1/drivers), "
                "`event: locations` (a FleetLocations: each moved driver's "
                "newest), `event: event` (an Event: driver.online, driver.offline, "
                "driver.status_changed; never dropped)",
                "FleetLocations or Event",
                [],
                stream=True,
            ),
        },
        "/v1/zones": {
            "get": _op(
                "driver.v1.ZoneService/ListZones",
                "A page of zones",
                "ListZonesResponse",
                params=_params(zpb.ListZonesRequest.DESCRIPTOR),
            ),
            "post": _op(
                "driver.v1.ZoneService/CreateZone",
                "Create a zone (id optional)",
                "Zone",
                body="Zone",
            ),
        },
        "/v1/zones/{zone_id}": {
            "get": _op("driver.v1.ZoneService/GetZone", "A zone", "Zone", params=[zone_id]),
            "patch": _op(
                "driver.v1.ZoneService/UpdateZone",
                "Replace a zone (optimistic with ?expected_version=)",
                "Zone",
                params=[
                    zone_id,
                    {
                        "name": "expected_version",
                        "in": "query",
                        "schema": {"type": "string", "format": "uint64"},
                    },
                ],
                body="Zone",
            ),
            "delete": _op(
                "driver.v1.ZoneService/DeleteZone",
                "Delete a zone",
                "DeleteZoneResponse",
                params=[
                    zone_id,
                    {
                        "name": "expected_version",
                        "in": "query",
                        "schema": {"type": "string", "format": "uint64"},
                    },
                ],
            ),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "driver-service HTTP API",
            "version": "v1",
            "description": (
                "The gRPC services of driver-service over HTTPS and JSON (proto3 JSON mapping, "
                "gRPC transcoding conventions). Authorization: `Bearer` tokens, the same as "
                f"gRPC's. Request bodies: application/json, at most {DEFAULT_MAX_BODY_BYTES} "
                "bytes by default (413 past it, 415 for another content type). See docs/http.md."
            ),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
