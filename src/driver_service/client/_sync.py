"""A thin blocking client over grpc's sync channel, for scripts and notebooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service.client._async import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_UPLOAD_TIMEOUT_S,
    channel_options,
)
from driver_service.client._hints import Transport
from driver_service.client._settings import ClientSettings
from driver_service.client._types import DriverSnapshot, UploadReport, utc_from_ns
from driver_service.client.errors import from_rpc_error
from driver_service.domain import Location
from driver_service.wire import location_to_pb, pb_to_location, timestamp_to_ns


class SyncDriverClient:
    """Blocking client with the same defaults, settings (`ca`, `cert`, `key`, `token`,
    `from_env()`) and exceptions as DriverClient."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, object]] = (),
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        own = ClientSettings(target, ca, cert, key, token)
        if credentials is None:
            credentials = own.credentials()
        self.transport = Transport(tls=credentials is not None, client_cert=bool(cert))
        metadata = (*metadata, *own.metadata())
        opts = channel_options(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        self._stub = pb_grpc.DriverServiceStub(self._channel)
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._metadata = tuple(metadata)

    @classmethod
    def from_settings(cls, settings: ClientSettings, **kwargs: Any) -> SyncDriverClient:
        """A client for `settings`; `kwargs` as for the constructor."""
        return cls(
            settings.target,
            ca=settings.ca,
            cert=settings.cert,
            key=settings.key,
            token=settings.token,
            **kwargs,
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> SyncDriverClient:
        """A client from the `DRIVER_SERVICE_*` variables the CLI reads."""
        return cls.from_settings(ClientSettings.from_env(), **kwargs)

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
            raise from_rpc_error(error, self.transport) from None
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
            raise from_rpc_error(error, self.transport) from None
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
            raise from_rpc_error(error, self.transport) from None
        return UploadReport(msg.received_count, msg.persisted_count, msg.session_id)
