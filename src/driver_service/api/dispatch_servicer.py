"""driver.v1.DispatchService over grpc.aio: decode, call Dispatch, encode, map errors."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.api.errors import AbortOnDomainError
from driver_service.dispatch.domain.commands import Command, CommandState
from driver_service.dispatch.service import Dispatch
from driver_service.domain import InvalidInput
from driver_service.wire import ns_to_timestamp

#: The proto enum's value for each command state.
_STATE: dict[CommandState, dpb.CommandState.ValueType] = {
    CommandState.QUEUED: dpb.COMMAND_STATE_QUEUED,
    CommandState.DELIVERED: dpb.COMMAND_STATE_DELIVERED,
    CommandState.ACCEPTED: dpb.COMMAND_STATE_ACCEPTED,
    CommandState.DECLINED: dpb.COMMAND_STATE_DECLINED,
    CommandState.EXPIRED: dpb.COMMAND_STATE_EXPIRED,
    CommandState.TIMED_OUT: dpb.COMMAND_STATE_TIMED_OUT,
}


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _command_status(command: Command) -> dpb.CommandStatus:
    msg = dpb.CommandStatus(
        command_id=command.command_id,
        driver_id=command.driver_id,
        state=_STATE[command.state],
        expires_at=ns_to_timestamp(command.expires_at_ns),
    )
    if command.delivered_at_ns is not None:
        msg.delivered_at.CopyFrom(ns_to_timestamp(command.delivered_at_ns))
    if command.settled_at_ns is not None:
        msg.settled_at.CopyFrom(ns_to_timestamp(command.settled_at_ns))
    return msg


class DispatchServicer(dpb_grpc.DispatchServiceServicer):
    """The dispatch RPCs; every rule lives in Dispatch, not here."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch

    async def FindNearbyDrivers(  # noqa: N802 - generated method name
        self,
        request: dpb.FindNearbyDriversRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dpb.FindNearbyDriversResponse:
        async with AbortOnDomainError(context):
            found = await self._dispatch.find_nearby(
                request.latitude,
                request.longitude,
                request.radius_m,
                request.limit,
                list(request.statuses),
                _seconds(request.max_age) if request.HasField("max_age") else None,
            )
        return dpb.FindNearbyDriversResponse(
            drivers=[
                dpb.NearbyDriver(
                    driver_id=n.driver.driver_id,
                    status=n.driver.status.value,
                    latitude=n.driver.latitude,
                    longitude=n.driver.longitude,
                    distance_m=n.distance_m,
                    last_seen_at=ns_to_timestamp(n.driver.last_seen_at_ns),
                )
                for n in found
            ]
        )

    async def DescribeDriver(  # noqa: N802
        self, request: dpb.DescribeDriverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dpb.DispatchDriver:
        async with AbortOnDomainError(context):
            view = await self._dispatch.describe(request.driver_id)
        d = view.driver
        return dpb.DispatchDriver(
            driver_id=d.driver_id,
            status=d.status.value,
            latitude=d.latitude,
            longitude=d.longitude,
            last_seen_at=ns_to_timestamp(d.last_seen_at_ns),
            stale=view.stale,
            connected=view.connected,
        )

    async def SendCommand(  # noqa: N802
        self, request: dpb.SendCommandRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dpb.SendCommandResponse:
        async with AbortOnDomainError(context):
            kind = request.command.WhichOneof("command")
            if kind not in ("ride_offer", "navigation"):
                raise InvalidInput("command must be a ride_offer or a navigation update")
            command = pb.ServerCommand()
            command.CopyFrom(request.command)
            offer_id: str | None = None
            if kind == "ride_offer":
                offer_id = command.ride_offer.offer_id
                if not offer_id:
                    offer_id = command.ride_offer.offer_id = f"ofr-{uuid.uuid4().hex}"
            sent = await self._dispatch.send_command(
                request.driver_id,
                command,
                offer_id=offer_id,
                ttl_s=_seconds(request.ttl) if request.HasField("ttl") else None,
            )
        return dpb.SendCommandResponse(
            command_id=sent.command_id,
            state=_STATE[sent.state],
            expires_at=ns_to_timestamp(sent.expires_at_ns),
        )

    async def GetCommandStatus(  # noqa: N802
        self, request: dpb.GetCommandStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dpb.CommandStatus:
        async with AbortOnDomainError(context):
            if request.wait_for_outcome:
                remaining = context.time_remaining()
                # Answer a little before the caller's deadline, so the answer can reach it.
                timeout = None if remaining is None else max(0.0, remaining - 0.05)
                command = await self._dispatch.wait(request.command_id, timeout)
            else:
                command = await self._dispatch.get_command(request.command_id)
        return _command_status(command)

    async def AnswerOffer(  # noqa: N802
        self, request: dpb.AnswerOfferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dpb.CommandStatus:
        async with AbortOnDomainError(context):
            command = await self._dispatch.answer_offer(
                request.offer_id, request.driver_id, request.accepted
            )
        return _command_status(command)
