"""driver.v1.DriverService over grpc.aio: decode, call DriverTracking, encode, map errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, cast

import grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.api.errors import AbortOnDomainError, abort_with
from driver_service.app.session_inbox import InputEnded, PushedCommand, SessionInbox
from driver_service.app.tracking import DriverTracking
from driver_service.app.upload import Upload
from driver_service.domain import DomainError, DriverNotFound, InvalidInput
from driver_service.wire import (
    NANOS,
    DriverResponses,
    LocationMessages,
    server_command,
    summary_to_pb,
)

log = logging.getLogger(__name__)

SERVICE = "driver.v1.DriverService"

_EMPTY_EVENT = (
    "DriverEvent has no event set: send exactly one of location, status_change or heartbeat"
)


def offer_message(ingest: Upload, msg: pb.LocationUpdate) -> DomainError | None:
    """Offer one wire update to an upload (validation, rate limit, group commit); the caller
    waited for room (`Upload.full`). A timestamp of zero is told from an unset one only
    then (HasField is the slow part)."""
    ts = msg.timestamp
    seconds = ts.seconds
    nanos = ts.nanos
    return ingest.offer_now(
        msg.driver_id,
        msg.latitude,
        msg.longitude,
        msg.speed_mps,
        msg.heading_degrees,
        seconds * NANOS + nanos if seconds or nanos or msg.HasField("timestamp") else None,
    )


async def offer_update(ingest: Upload, msg: pb.LocationUpdate) -> DomainError | None:
    """`offer_message` after waiting for room in the writer."""
    if ingest.full:
        await ingest.wait_for_room()
    return offer_message(ingest, msg)


class DriverServicer(pb_grpc.DriverServiceServicer):
    """The seed's four RPCs; every rule lives in DriverTracking, not here."""

    def __init__(self, tracking: DriverTracking) -> None:
        self._tracking = tracking
        self._responses = DriverResponses()
        self._locations = LocationMessages()

    async def GetDriver(  # noqa: N802 - generated method name
        self,
        request: pb.GetDriverRequest,
        context: grpc.aio.ServicerContext[pb.GetDriverRequest, pb.GetDriverResponse],
    ) -> pb.GetDriverResponse:
        # The hot path: try/except costs nothing when no error is raised, while
        # AbortOnDomainError (used by every other handler) adds an object and two awaits.
        try:
            driver = await self._tracking.get_driver(request.driver_id)
        except DomainError as error:
            if isinstance(error, DriverNotFound):  # erased: keep nothing of its last state
                self._responses.forget(request.driver_id)
            await abort_with(context, error)
        return self._responses.of(driver)

    async def get_driver_encoded(
        self,
        request: pb.GetDriverRequest,
        context: grpc.aio.ServicerContext[pb.GetDriverRequest, bytes],
    ) -> bytes:
        """GetDriver as the server sends it (`add_driver_service`): the reply's protobuf
        bytes, encoded once per state of the driver, read without a wait where this process
        holds the driver's current state. The same answers as `GetDriver`, byte for byte."""
        driver_id = request.driver_id
        driver = self._tracking.current_driver(driver_id)
        if driver is None:
            try:
                driver = await self._tracking.get_driver(driver_id)
            except DomainError as error:
                if isinstance(error, DriverNotFound):  # erased: keep nothing of its last state
                    self._responses.forget(driver_id)
                await abort_with(context, error)
        return self._responses.encoded(driver)

    async def StreamLocation(  # noqa: N802
        self,
        request: pb.StreamLocationRequest,
        context: grpc.aio.ServicerContext[pb.StreamLocationRequest, pb.LocationUpdate],
    ) -> AsyncIterator[pb.LocationUpdate]:
        # Each Location goes to every watcher of its driver: its message is built once.
        async with AbortOnDomainError(context):
            async for location in self._tracking.watch(request.driver_id):
                yield self._locations.of(location)

    async def UploadLocations(  # noqa: N802
        self,
        request_iterator: AsyncIterable[pb.LocationUpdate],
        context: grpc.aio.ServicerContext[pb.LocationUpdate, pb.UploadSummary],
    ) -> pb.UploadSummary:
        async with AbortOnDomainError(context):
            upload = self._tracking.new_upload()
            writer = upload.writer
            # The ingest hot path: a coroutine (and an await) only while the writer is full.
            async for msg in request_iterator:
                if writer.full:
                    await writer.wait_for_room()
                offer_message(upload, msg)
            result = await upload.finish()
        return summary_to_pb(result)

    async def DriverSession(  # noqa: N802
        self,
        request_iterator: AsyncIterable[pb.DriverEvent],
        context: grpc.aio.ServicerContext[pb.DriverEvent, pb.ServerCommand],
    ) -> AsyncIterator[pb.ServerCommand]:
        tracking = self._tracking
        async with AbortOnDomainError(context):
            inbox: SessionInbox[pb.DriverEvent] = tracking.open_session()
        # Made by the first location: most sessions idle between heartbeats for hours.
        ingest: Upload | None = None
        # Events are read by a pump task into the session's inbox, so that shutdown and
        # server-pushed commands reach a session that is waiting for the client.
        pump = asyncio.get_running_loop().create_task(_pump(request_iterator, inbox))
        try:
            async with AbortOnDomainError(context):
                while True:
                    event = await inbox.get()
                    if isinstance(event, PushedCommand):
                        yield server_command(event.command)
                        continue
                    if isinstance(event, InputEnded):
                        if event.error is not None:
                            raise event.error
                        break
                    kind = event.WhichOneof("event")
                    if kind == "location":
                        ingest = ingest or tracking.new_upload()
                        await _session_location(tracking, inbox, ingest, event.location)
                    elif kind is None:
                        raise InvalidInput(_EMPTY_EVENT)
                    elif (reply := await _answer(tracking, inbox, ingest, event)) is not None:
                        yield reply
                if ingest is not None:
                    await ingest.finish()
        finally:
            pump.cancel()
            tracking.close_session(inbox)


async def _answer(
    tracking: DriverTracking,
    inbox: SessionInbox[pb.DriverEvent],
    ingest: Upload | None,
    event: pb.DriverEvent,
) -> pb.ServerCommand | None:
    """A heartbeat's pong or a status change, handled only once the session's locations
    before it are committed: an answered event implies they are visible to GetDriver."""
    if ingest is not None:
        await ingest.settled()
    if event.WhichOneof("event") == "heartbeat":
        return pb.ServerCommand(pong=pb.PingResponse(server_ts_ms=tracking.server_time_ms()))
    change = event.status_change
    await tracking.change_status(change.driver_id, change.new_status)
    tracking.bind_session(inbox, change.driver_id)
    return None


async def _session_location(
    tracking: DriverTracking,
    inbox: SessionInbox[pb.DriverEvent],
    ingest: Upload,
    msg: pb.LocationUpdate,
) -> None:
    """A session's location goes the upload path; invalid ones are dropped (no per-event
    error on this stream), the first accepted one binds the session to its driver."""
    rejected = await offer_update(ingest, msg)
    if rejected is not None:
        log.info("session dropped an invalid location: %s", rejected)
    elif inbox.driver_id is None:
        tracking.bind_session(inbox, msg.driver_id)


async def _pump(events: AsyncIterable[pb.DriverEvent], inbox: SessionInbox[pb.DriverEvent]) -> None:
    """Move client events into the inbox; end with a marker, or with the read error."""
    try:
        async for event in events:
            await inbox.put(event)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - handed to the session loop, which re-raises it
        await inbox.put(InputEnded(error))
        return
    await inbox.put(InputEnded())


def add_driver_service(server: grpc.aio.Server, servicer: DriverServicer) -> None:
    """`driver_pb2_grpc.add_DriverServiceServicer_to_server`, but GetDriver answers with
    bytes already encoded (`DriverServicer.get_driver_encoded`): a handler without a
    response serializer has its return value sent as it is. The other methods are the
    generated ones."""
    generated: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    pb_grpc.add_DriverServiceServicer_to_server(
        servicer, cast("grpc.aio.Server", _Registered(generated))
    )
    handlers = dict(generated)
    handlers["GetDriver"] = grpc.unary_unary_rpc_method_handler(
        servicer.get_driver_encoded,
        request_deserializer=pb.GetDriverRequest.FromString,
        response_serializer=None,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    register = getattr(server, "add_registered_method_handlers")  # noqa: B009 - not in grpc-stubs
    register(SERVICE, handlers)


class _Registered:
    """Stands in for a server to collect the generated method handlers."""

    def __init__(self, into: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._into = into

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._into.update(handlers)
