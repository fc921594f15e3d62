"""The HTTP front door's ASGI application (Starlette): every route, each mirroring one gRPC
method whose rule in api/rules.py it applies, over the same servicers (http/transcode.py).

Routes follow gRPC transcoding (Google API design guide): resource paths, custom methods
after a colon (`POST /v1/drivers/{id}:setStatus`), query parameters for the fields of GET
requests, bodies in the proto3 JSON mapping. Errors are `{"error": {"code", "status",
"message"}}` with the HTTP status gRPC transcoding gives each code (http/errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import unquote

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service.api.dispatch_servicer import DispatchServicer
from driver_service.api.errors import status_for
from driver_service.api.event_servicer import EventServicer, event_to_pb
from driver_service.api.history_servicer import HistoryServicer
from driver_service.api.rules import (
    DISPATCH_SERVICE,
    DRIVER_SERVICE,
    EVENT_SERVICE,
    HISTORY_SERVICE,
    ZONE_SERVICE,
    method_path,
)
from driver_service.api.servicer import DriverServicer
from driver_service.api.zone_servicer import ZoneServicer
from driver_service.app.events import EventFeed
from driver_service.app.fleet import FleetChanges, FleetView, Relist
from driver_service.app.history import LocationHistory
from driver_service.app.tracking import DriverTracking
from driver_service.app.zones import ZoneAdmin
from driver_service.dispatch.service import Dispatch
from driver_service.domain import DomainError
from driver_service.http.errors import JSON_TYPE, HttpError, error_response
from driver_service.http.limits import DEFAULT_MAX_BODY_BYTES, MAX_UPLOAD_LOCATIONS
from driver_service.http.openapi import document
from driver_service.http.routing import RoutedByRawPath
from driver_service.http.sse import DropOldest, SseItem, sse_stream
from driver_service.http.transcode import (
    CONTEXT,
    authorize,
    bad_request,
    parse_json,
    query_to_dict,
    to_json,
)
from driver_service.interceptors.auth import AuthPolicy
from driver_service.interceptors.request_id import (
    REQUEST_ID_HEADER,
    is_safe_request_id,
    new_request_id,
)
from driver_service.observability.context import CALL, new_scope
from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.wire import driver_to_pb, location_to_pb, ns_to_timestamp

log = logging.getLogger(__name__)
access = logging.getLogger("driver_service.http.access")

DEFAULT_HEARTBEAT_S = 15.0
#: Live locations buffered per SSE client before the oldest is dropped.
DEFAULT_LOCATION_BUFFER = 16

GET_DRIVER = method_path(DRIVER_SERVICE, "GetDriver")
STREAM_LOCATION = method_path(DRIVER_SERVICE, "StreamLocation")
UPLOAD_LOCATIONS = method_path(DRIVER_SERVICE, "UploadLocations")
DRIVER_SESSION = method_path(DRIVER_SERVICE, "DriverSession")
FIND_NEARBY = method_path(DISPATCH_SERVICE, "FindNearbyDrivers")
GET_TRAIL = method_path(HISTORY_SERVICE, "GetTrail")
GET_TRIPS = method_path(HISTORY_SERVICE, "GetTrips")
GET_SUMMARY = method_path(HISTORY_SERVICE, "GetSummary")
CREATE_ZONE = method_path(ZONE_SERVICE, "CreateZone")
GET_ZONE = method_path(ZONE_SERVICE, "GetZone")
LIST_ZONES = method_path(ZONE_SERVICE, "ListZones")
UPDATE_ZONE = method_path(ZONE_SERVICE, "UpdateZone")
DELETE_ZONE = method_path(ZONE_SERVICE, "DeleteZone")
WATCH_EVENTS = method_path(EVENT_SERVICE, "WatchEvents")
#: HTTP-only routes, ruled in api/rules.py HTTP_RULES.
LIST_FLEET = "GET /v1/drivers"
FLEET_STREAM = "GET /v1/fleet:stream"

SSE_TYPE = "text/event-stream"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class HttpOptions:
    """The HTTP settings the application needs (server/config.py has the flags)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    location_buffer: int = DEFAULT_LOCATION_BUFFER
    cors_origins: tuple[str, ...] = ()
    map_tiles: str = ""
    tls: bool = True
    #: The server's --stale-after: a listed driver silent for longer is marked stale.
    stale_after_s: float = 120.0


@dataclass
class Backends:
    """The application services the routes call (those not running answer UNIMPLEMENTED)."""

    tracking: DriverTracking
    dispatch: Dispatch | None = None
    zones: ZoneAdmin | None = None
    events: EventFeed | None = None
    history: LocationHistory | None = None


@dataclass
class FrontDoor:
    backends: Backends
    auth: AuthPolicy | None
    options: HttpOptions = field(default_factory=HttpOptions)
    metrics: ServiceMetrics | None = None
    #: Set when the server stops: every SSE stream ends.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        b = self.backends
        self.drivers = DriverServicer(b.tracking)
        self.dispatch = None if b.dispatch is None else DispatchServicer(b.dispatch)
        self.zones = None if b.zones is None else ZoneServicer(b.zones)
        self.events = None if b.events is None else EventServicer(b.events)
        self.history = None if b.history is None else HistoryServicer(b.history)
        self.fleet = FleetView(
            b.tracking.repository,
            b.tracking.bus,
            b.events,
            int(self.options.stale_after_s * 1e9),
        )

    # --- plumbing ---------------------------------------------------------------------------
    def _authorize(self, request: Request, method: str, *messages: Any) -> None:
        authorize(self.auth, request.headers.getlist("authorization"), method, messages)

    async def _body(self, request: Request) -> Any:
        """The request's JSON body: 415 unless it is JSON, 413 past the limit, 400 if bad."""
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != JSON_TYPE:
            raise HttpError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the body must be {JSON_TYPE}, not {ctype or 'missing'}",
                http_status=415,
            )
        limit = self.options.max_body_bytes
        too_large = HttpError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the body is larger than {limit} bytes",
            http_status=413,
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None

    @staticmethod
    def _query(request: Request, message: Any, **path: str) -> Any:
        values = query_to_dict(message.DESCRIPTOR, request.query_params.multi_items(), path)
        return parse_json(values, message)

    @staticmethod
    def _need(servicer: Any, what: str) -> Any:
        if servicer is None:
            raise HttpError(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not served here")
        return servicer

    # --- drivers ----------------------------------------------------------------------------
    async def get_driver(self, request: Request) -> Response:
        req = self._query(request, pb.GetDriverRequest(), driver_id=_path_id(request))
        self._authorize(request, GET_DRIVER, req)
        return _json(await self.drivers.GetDriver(req, CONTEXT))

    async def nearby(self, request: Request) -> Response:
        req = self._query(request, dpb.FindNearbyDriversRequest())
        self._authorize(request, FIND_NEARBY, req)
        servicer = self._need(self.dispatch, "DispatchService")
        return _json(await servicer.FindNearbyDrivers(req, CONTEXT))

    async def list_fleet(self, request: Request) -> Response:
        """Every driver, whatever its status or age, in pages by id (page_size at most
        app/fleet.py MAX_PAGE_SIZE; next_page_token empty on the last page)."""
        params = _plain_query(request, {"page_size", "pageSize", "page_token", "pageToken"})
        self._authorize(request, LIST_FLEET)
        size_text = params.get("page_size", params.get("pageSize", "0"))
        if not size_text.lstrip("-").isdigit():
            raise bad_request(f"page_size must be a whole number, not {size_text!r}")
        page = await self.fleet.list_page(
            int(size_text), params.get("page_token", params.get("pageToken", ""))
        )
        now_ns = time.time_ns()
        drivers = []
        for driver in page.drivers:
            item = to_json(driver_to_pb(driver))
            item["stale"] = self.fleet.is_stale(driver, now_ns)
            if driver.location is not None:  # when its position was fixed (lastSeenAt may be later)
                item["locatedAt"] = ns_to_timestamp(driver.location.recorded_at_ns).ToJsonString()
            drivers.append(item)
        return _json_body({"drivers": drivers, "nextPageToken": page.next_page_token})

    async def driver_verb(self, request: Request) -> Response:
        """POST /v1/drivers/{id}:verb; the verb follows the last colon (ids may hold colons)."""
        # The routing path keeps an encoded ":" as %3A: only a literal one starts the verb.
        name, _, verb = request.path_params["name"].rpartition(":")
        driver_id = unquote(name)
        if verb == "uploadLocations" and driver_id:
            return await self._upload(request, driver_id)
        if verb == "setStatus" and driver_id:
            return await self._set_status(request, driver_id)
        raise HttpError(grpc.StatusCode.NOT_FOUND, f"no such method: {request.url.path}")

    async def batch_upload(self, request: Request) -> Response:
        return await self._upload(request, None)

    async def _upload(self, request: Request, driver_id: str | None) -> Response:
        body = await self._body(request)
        if not isinstance(body, dict) or set(body) - {"locations"}:
            raise bad_request('the body must be {"locations": [LocationUpdate, ...]}')
        items = body.get("locations", [])
        if not isinstance(items, list):
            raise bad_request("locations must be a list of LocationUpdate")
        if len(items) > MAX_UPLOAD_LOCATIONS:
            raise bad_request(f"at most {MAX_UPLOAD_LOCATIONS} locations per request")
        updates = []
        for i, item in enumerate(items):
            update = parse_json(item, pb.LocationUpdate())
            if driver_id is not None:
                if not update.driver_id:
                    update.driver_id = driver_id
                elif update.driver_id != driver_id:
                    raise bad_request(
                        f"locations[{i}] names driver {update.driver_id!r}, "
                        f"not the path's {driver_id!r}"
                    )
            updates.append(update)
        # Every location is checked before any is stored: a request is all or nothing here.
        self._authorize(request, UPLOAD_LOCATIONS, *updates)

        async def stream() -> AsyncIterator[pb.LocationUpdate]:
            for update in updates:
                yield update

        return _json(await self.drivers.UploadLocations(stream(), CONTEXT))

    async def _set_status(self, request: Request, driver_id: str) -> Response:
        change = parse_json(await self._body(request), pb.DriverStatusChange())
        if change.driver_id and change.driver_id != driver_id:
            raise bad_request(f"the body names driver {change.driver_id!r}, not {driver_id!r}")
        change.driver_id = driver_id
        self._authorize(request, DRIVER_SESSION, pb.DriverEvent(status_change=change))
        driver = await self.backends.tracking.change_status(driver_id, change.new_status)
        return _json(driver_to_pb(driver))

    # --- history ----------------------------------------------------------------------------
    async def trail(self, request: Request) -> Response:
        req = self._query(request, hpb.GetTrailRequest(), driver_id=_path_id(request))
        self._authorize(request, GET_TRAIL, req)
        servicer = self._need(self.history, "HistoryService")
        points = hpb.TrailChunk()
        async for chunk in servicer.GetTrail(req, CONTEXT):
            points.points.extend(chunk.points)
        return _json(points)

    async def trips(self, request: Request) -> Response:
        req = self._query(request, hpb.GetTripsRequest(), driver_id=_path_id(request))
        self._authorize(request, GET_TRIPS, req)
        servicer = self._need(self.history, "HistoryService")
        return _json(await servicer.GetTrips(req, CONTEXT))

    async def summary(self, request: Request) -> Response:
        req = self._query(request, hpb.GetSummaryRequest(), driver_id=_path_id(request))
        self._authorize(request, GET_SUMMARY, req)
        servicer = self._need(self.history, "HistoryService")
        return _json(await servicer.GetSummary(req, CONTEXT))

    # --- zones ------------------------------------------------------------------------------
    async def zones_collection(self, request: Request) -> Response:
        if request.method == "POST":
            zone = parse_json(await self._body(request), zpb.Zone())
            req: Any = zpb.CreateZoneRequest(zone=zone)
            self._authorize(request, CREATE_ZONE, req)
            servicer = self._need(self.zones, "ZoneService")
            return _json(await servicer.CreateZone(req, CONTEXT))
        req = self._query(request, zpb.ListZonesRequest())
        self._authorize(request, LIST_ZONES, req)
        servicer = self._need(self.zones, "ZoneService")
        return _json(await servicer.ListZones(req, CONTEXT))

    async def zone(self, request: Request) -> Response:
        zone_id = _path_id(request)
        method = request.method
        if method == "GET":
            req: Any = self._query(request, zpb.GetZoneRequest(), id=zone_id)
            self._authorize(request, GET_ZONE, req)
            return _json(await self._need(self.zones, "ZoneService").GetZone(req, CONTEXT))
        if method == "PATCH":
            zone = parse_json(await self._body(request), zpb.Zone())
            if zone.id and zone.id != zone_id:
                raise bad_request(f"the body names zone {zone.id!r}, not {zone_id!r}")
            zone.id = zone_id
            req = self._query(request, zpb.UpdateZoneRequest())
            req.zone.CopyFrom(zone)
            self._authorize(request, UPDATE_ZONE, req)
            return _json(await self._need(self.zones, "ZoneService").UpdateZone(req, CONTEXT))
        req = self._query(request, zpb.DeleteZoneRequest(), id=zone_id)
        self._authorize(request, DELETE_ZONE, req)
        return _json(await self._need(self.zones, "ZoneService").DeleteZone(req, CONTEXT))

    # --- streams ----------------------------------------------------------------------------
    def _sse(self, source: AsyncIterator[SseItem]) -> Response:
        return _SseResponse(source, self.options.heartbeat_s, self.stopping)

    async def location_stream(self, request: Request) -> Response:
        req = self._query(request, pb.StreamLocationRequest(), driver_id=_path_id(request))
        self._authorize(request, STREAM_LOCATION, req)
        first = await _first(self.drivers.StreamLocation(req, CONTEXT))

        async def items() -> AsyncIterator[SseItem]:
            async for msg in first:
                yield SseItem(to_json(msg), event="location")

        return self._sse(DropOldest(items(), self.options.location_buffer))

    async def event_stream(self, request: Request) -> Response:
        req = self._query(request, epb.WatchEventsRequest())
        resume = request.headers.get("last-event-id")
        if resume is not None:
            if not resume.isdigit():
                raise bad_request("Last-Event-ID must be an event id (a number)")
            req.after_id = int(resume)  # a reconnecting client's header wins over ?after_id=
        self._authorize(request, WATCH_EVENTS, req)
        servicer = self._need(self.events, "EventService")
        first = await _first(servicer.WatchEvents(req, CONTEXT))

        async def items() -> AsyncIterator[SseItem]:
            async for event in first:
                yield SseItem(to_json(event), event="event", id=str(event.id))

        return self._sse(items())

    async def fleet_stream(self, request: Request) -> Response:
        """Every driver's changes (app/fleet.py): `ready` once subscribed (list the fleet
        with GET /v1/drivers after it and nothing falls between; sent again when live
        locations may have been lost, e.g. after a Redis reconnect), then `locations` (each
        moved driver's newest location, coalesced for a slow reader) and `event` (driver.
        online, driver.offline, driver.status_changed, never dropped) as they come."""
        _plain_query(request, set())
        self._authorize(request, FLEET_STREAM)
        if self.backends.tracking.stopping:
            raise HttpError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; reconnect")
        return self._sse(_FleetFrames(await self.fleet.open_changes()))

    # --- the map and its documents -----------------------------------------------------------
    async def index(self, request: Request) -> Response:
        page = _static_text("index.html")
        return Response(page, media_type="text/html; charset=utf-8")

    async def config(self, request: Request) -> Response:
        return JSONResponse({"mapTiles": self.options.map_tiles})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(document())


async def _first(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Start a servicer's stream before the response: its refusals (invalid id, shutting
    down, a bad filter) become an HTTP error rather than an empty event stream. Returns the
    stream with the first message, if it came at once, put back in front."""
    pending = asyncio.ensure_future(anext(stream))
    done, _ = await asyncio.wait({pending}, timeout=0.05)
    if not done:

        async def later() -> AsyncIterator[Any]:
            try:
                yield await pending
            except StopAsyncIteration:
                return
            async for item in stream:
                yield item

        return later()
    try:
        head = pending.result()
    except StopAsyncIteration:
        head = None

    async def rest() -> AsyncIterator[Any]:
        if head is None:
            return
        yield head
        async for item in stream:
            yield item

    return rest()


class _SseResponse(StreamingResponse):
    """An SSE response that closes its source however it ends, even if its body was never
    read (a client gone before the first byte): a stream holds subscriptions."""

    def __init__(
        self, source: AsyncIterator[SseItem], heartbeat_s: float, stopping: asyncio.Event
    ) -> None:
        super().__init__(
            sse_stream(source, heartbeat_s, stopping),
            media_type=SSE_TYPE,
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )
        self._source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._source.aclose()  # type: ignore[attr-defined]


class _FleetFrames:
    """The fleet feed as SSE items: `ready`, then `locations` and `event` frames."""

    def __init__(self, changes: FleetChanges) -> None:
        self._changes = changes
        self._ready_sent = False

    def __aiter__(self) -> _FleetFrames:
        return self

    async def __anext__(self) -> SseItem:
        if not self._ready_sent:
            self._ready_sent = True
            return SseItem({}, event="ready")
        change = await anext(self._changes)
        if isinstance(change, Relist):  # locations may have been lost: list the fleet again
            return SseItem({}, event="ready")
        if isinstance(change, list):
            locations = [to_json(location_to_pb(x)) for x in change]
            return SseItem({"locations": locations}, event="locations")
        return SseItem(to_json(event_to_pb(change)), event="event")

    async def aclose(self) -> None:
        await self._changes.aclose()


def _path_id(request: Request) -> str:
    """The `{id}` of the path as the caller meant it (http/routing.py keeps `/`, `%` and `:`
    encoded for routing; each is one character of the id)."""
    return unquote(request.path_params["id"])


def _json(message: Any) -> Response:
    return _json_body(to_json(message))


def _json_body(body: Any) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        media_type=JSON_TYPE,
        headers={"cache-control": "no-store"},
    )


def _plain_query(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query of a route that mirrors no message: each parameter once, none unknown."""
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise bad_request(f"unknown query parameter {key!r}")
        if key in params:
            raise bad_request(f"query parameter {key!r} given twice")
        params[key] = value
    return params


def _static_text(name: str) -> str:
    return resources.files("driver_service.http").joinpath("static", name).read_text("utf-8")


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(route: str, handler: Handler) -> Handler:
    """A route's handler with every failure answered as JSON (never a traceback)."""

    async def endpoint(request: Request) -> Response:
        request.scope.setdefault("state", {})["route"] = route
        try:
            return await handler(request)
        except HttpError as error:
            headers = {"www-authenticate": "Bearer"} if error.http_status == 401 else None
            return error_response(error, headers)
        except DomainError as error:
            return error_response(HttpError(status_for(error), str(error)))
        except ClientDisconnect:  # the caller hung up mid-body: nothing to answer, no fault
            return Response(status_code=499)
        except Exception:
            log.exception("http %s failed", route)
            return error_response(HttpError(grpc.StatusCode.INTERNAL, "internal error"))

    return endpoint


def content_security_policy(map_tiles: str) -> str:
    """Scripts and styles only from our own files (no inline script, no eval); images also
    from the configured tile server's origin."""
    img = "'self' data:"
    if map_tiles:
        scheme, _, rest = map_tiles.partition("://")
        origin = f"{scheme}://{rest.split('/', 1)[0]}"
        img += " " + origin.replace("{s}", "*")
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {img}; connect-src 'self'; font-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


class Observed:
    """Request ids, security headers, metrics and one access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics | None, csp: str, tls: bool) -> None:
        self.app = app
        self.metrics = metrics
        headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]
        if tls:
            headers.append((b"strict-transport-security", b"max-age=31536000"))
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for key, value in scope["headers"]:
            if key == REQUEST_ID_HEADER.encode():
                given = value.decode("latin-1")
        request_id = given if is_safe_request_id(given) else new_request_id()
        token = CALL.set(new_scope(request_id))
        started = time.perf_counter()
        status = 500
        extra = [*self.headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            duration = time.perf_counter() - started
            route = scope.get("state", {}).get("route", "other")
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            if self.metrics is not None:
                self.metrics.http_request(route, method, status, duration)
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            access.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "http %s %s %d",
                method,
                route,
                status,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "status": status,
                    "peer": peer,
                    "duration_ms": round(duration * 1000, 3),
                },
            )
            CALL.reset(token)


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(
            HttpError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{request.method} is not allowed on {request.url.path}",
                http_status=405,
            )
        )
    return error_response(
        HttpError(grpc.StatusCode.NOT_FOUND, f"no such resource: {request.url.path}")
    )


def build_app(door: FrontDoor) -> ASGIApp:
    """The ASGI application of `door`: routes, static files, CORS when allowed, observation."""
    e = _endpoint
    routes = [
        Route("/", e("index", door.index), methods=["GET"]),
        Route("/config.json", e("config", door.config), methods=["GET"]),
        Route("/openapi.json", e("openapi", door.openapi), methods=["GET"]),
        Route("/v1/drivers:nearby", e("nearby", door.nearby), methods=["GET"]),
        Route("/v1/fleet:stream", e("fleet_stream", door.fleet_stream), methods=["GET"]),
        Route("/v1/drivers", e("list_drivers", door.list_fleet), methods=["GET"]),
        Route("/v1/locations:batchUpload", e("batch_upload", door.batch_upload), methods=["POST"]),
        Route("/v1/events:stream", e("event_stream", door.event_stream), methods=["GET"]),
        Route("/v1/drivers/{id}", e("get_driver", door.get_driver), methods=["GET"]),
        Route("/v1/drivers/{name}", e("driver_verb", door.driver_verb), methods=["POST"]),
        Route("/v1/drivers/{id}/trail", e("trail", door.trail), methods=["GET"]),
        Route("/v1/drivers/{id}/trips", e("trips", door.trips), methods=["GET"]),
        Route("/v1/drivers/{id}/summary", e("summary", door.summary), methods=["GET"]),
        Route(
            "/v1/drivers/{id}/locations:stream",
            e("location_stream", door.location_stream),
            methods=["GET"],
        ),
        Route("/v1/zones", e("zones", door.zones_collection), methods=["GET", "POST"]),
        Route("/v1/zones/{id}", e("zone", door.zone), methods=["GET", "PATCH", "DELETE"]),
        Mount(
            "/static",
            app=StaticFiles(packages=[("driver_service.http", "static")]),
            name="static",
        ),
    ]
    middleware = []
    if door.options.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(door.options.cors_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["authorization", "content-type", "last-event-id", "x-request-id"],
                expose_headers=["x-request-id"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    csp = content_security_policy(door.options.map_tiles)
    return Observed(RoutedByRawPath(app), door.metrics, csp, door.options.tls)
