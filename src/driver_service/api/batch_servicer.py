"""driver.v1.DriverBatchService over grpc.aio: many lookups or many updates per message.

The per-call cost of grpc.aio (~200-300 µs of CPU) is paid once per message here, not once
per driver, so callers with volume get tens of thousands of lookups or updates per second per
core. Lookups go through DriverTracking's `get_driver`; updates get UploadLocations' rules
(same validation, rate limit, group commit, and an acknowledgement that counts only what was
durably stored) a message at a time rather than an update at a time (`Upload.offer_many`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import grpc

from driver_service._gen.driver.v1 import batch_pb2 as bpb
from driver_service._gen.driver.v1 import batch_pb2_grpc as bpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.api.errors import AbortOnDomainError
from driver_service.app.tracking import DriverTracking
from driver_service.domain import DriverNotFound
from driver_service.wire import NANOS, summary_to_pb, update_fixes

SERVICE_NAME = bpb.DESCRIPTOR.services_by_name["DriverBatchService"].full_name


class DriverBatchServicer(bpb_grpc.DriverBatchServiceServicer):
    """Batch lookups and batched uploads over the same DriverTracking as DriverServicer."""

    def __init__(self, tracking: DriverTracking) -> None:
        self._tracking = tracking

    async def _lookup(self, request: bpb.GetDriversRequest) -> bpb.GetDriversResponse:
        """Answer every id in order; an invalid id fails the whole request (INVALID_ARGUMENT),
        as it would fail GetDriver."""
        response = bpb.GetDriversResponse()
        found = response.drivers
        not_found = response.not_found
        get_driver = self._tracking.get_driver
        for driver_id in request.driver_ids:
            try:
                driver = await get_driver(driver_id)
            except DriverNotFound:
                not_found.append(driver_id)
                continue
            # Filled in place (the same fields as wire.driver_to_pb): no message copies.
            out = found.add(driver_id=driver.driver_id, status=driver.status.value)
            location = driver.location
            if location is not None:
                out.latitude = location.latitude
                out.longitude = location.longitude
            seen = out.last_seen_at
            seen.seconds, seen.nanos = divmod(driver.last_seen_at_ns, NANOS)
        return response

    async def GetDrivers(  # noqa: N802 - generated method name
        self,
        request: bpb.GetDriversRequest,
        context: grpc.aio.ServicerContext[bpb.GetDriversRequest, bpb.GetDriversResponse],
    ) -> bpb.GetDriversResponse:
        async with AbortOnDomainError(context):
            return await self._lookup(request)

    async def LookupDrivers(  # noqa: N802
        self,
        request_iterator: AsyncIterable[bpb.GetDriversRequest],
        context: grpc.aio.ServicerContext[bpb.GetDriversRequest, bpb.GetDriversResponse],
    ) -> AsyncIterator[bpb.GetDriversResponse]:
        async with AbortOnDomainError(context):
            async for request in request_iterator:
                yield await self._lookup(request)

    async def UploadLocationBatches(  # noqa: N802
        self,
        request_iterator: AsyncIterable[bpb.LocationBatch],
        context: grpc.aio.ServicerContext[bpb.LocationBatch, pb.UploadSummary],
    ) -> pb.UploadSummary:
        """Each update gets what UploadLocations gives it (validation, rate limit, counted
        as received and dropped if refused, acknowledged only after its commit), but a
        message's updates are validated in one loop and queued with one call."""
        async with AbortOnDomainError(context):
            upload = self._tracking.new_upload()
            async for batch in request_iterator:
                await upload.offer_many(list(update_fixes(batch.updates)))
            result = await upload.finish()
        return summary_to_pb(result)


def add_batch_service(server: grpc.aio.Server, tracking: DriverTracking) -> None:
    """Register the batch service on `server` (beside DriverService, before start)."""
    bpb_grpc.add_DriverBatchServiceServicer_to_server(DriverBatchServicer(tracking), server)
