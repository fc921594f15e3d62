"""A thin blocking client over grpc's sync channel, for scripts and notebooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

import grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.api.convert import location_to_pb, pb_to_location, timestamp_to_ns
from driver_service.client._async import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_UPLOAD_TIMEOUT_S,
    channel_options,
)
from driver_service.client._types import DriverSnapshot, UploadReport, utc_from_ns
from driver_service.client.errors import from_rpc_error
from driver_service.domain import Location


class SyncDriverClient:
    """Blocking client with the same defaults and exceptions as DriverClient."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        opts = channel_options(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.DriverServiceStub(self._channel)
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._metadata = tuple(metadata)

    def __enter__(self) -> SyncDriverClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def get_driver(self, driver_id: str, *, timeout: float | None = None) -> DriverSnapshot:
        try:
            msg = self._stub.GetDriver(
                pb.GetDriverRequest(driver_id=driver_id),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return DriverSnapshot(
            msg.driver_id,
            msg.status,
            msg.latitude,
            msg.longitude,
            utc_from_ns(timestamp_to_ns(msg.last_seen_at)),
        )

    def watch(self, driver_id: str) -> Iterator[Location]:
        call = self._stub.StreamLocation(
            pb.StreamLocationRequest(driver_id=driver_id), metadata=self._metadata
        )
        try:
            for msg in call:
                yield pb_to_location(msg)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def upload(
        self, locations: Iterable[Location], *, timeout: float | None = None
    ) -> UploadReport:
        try:
            msg = self._stub.UploadLocations(
                (location_to_pb(loc) for loc in locations),
                timeout=self.upload_timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return UploadReport(msg.received_count, msg.persisted_count, msg.session_id)
