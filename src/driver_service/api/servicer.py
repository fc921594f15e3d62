"""driver.v1.DriverService over grpc.aio: decode, call DriverTracking, encode, map errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator

import grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.api.errors import AbortOnDomainError, abort_with
from driver_service.app.session_inbox import InputEnded, PushedCommand, SessionInbox
from driver_service.app.tracking import DriverTracking
from driver_service.app.upload import Upload
from driver_service.domain import DomainError, InvalidInput
from driver_service.wire import (
    DriverResponses,
    LocationMessages,
    server_command,
    summary_to_pb,
    timestamp_to_ns,
)

log = logging.getLogger(__name__)

_EMPTY_EVENT = (
    "DriverEvent has no event set: send exactly one of location, status_change or heartbeat"
)


async def offer_update(ingest: Upload, msg: pb.LocationUpdate) -> DomainError | None:
    """Offer one wire update to an upload (validation, rate limit, group commit)."""
    return await ingest.offer(
        msg.driver_id,
        msg.latitude,
        msg.longitude,
        msg.speed_mps,
        msg.heading_degrees,
        timestamp_to_ns(msg.timestamp) if msg.HasField("timestamp") else None,
    )


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
            await abort_with(context, error)
        return self._responses.of(driver)

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
            async for msg in request_iterator:
                await offer_update(upload, msg)
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
