"""Client library for driver.v1.DriverService: async (`DriverClient`) and blocking
(`SyncDriverClient`), with a default deadline on every call and typed errors; round_robin
over every server address, GetDriver retried on UNAVAILABLE, and (async) a `watch()` that
reconnects and an `upload()` that resends what was not acknowledged. See docs/client.md."""

from driver_service.client._async import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_UPLOAD_CHUNK,
    DEFAULT_UPLOAD_TIMEOUT_S,
    DriverClient,
    DriverSession,
)
from driver_service.client._retry import Backoff, channel_options
from driver_service.client._settings import DEFAULT_TARGET, ClientSettings
from driver_service.client._sync import SyncDriverClient
from driver_service.client._types import DriverSnapshot, UploadReport, utc_from_ns
from driver_service.client.errors import (
    Cancelled,
    ClientConfigError,
    DeadlineExceeded,
    DriverServiceError,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_UPLOAD_CHUNK",
    "DEFAULT_UPLOAD_TIMEOUT_S",
    "Backoff",
    "Cancelled",
    "ClientConfigError",
    "ClientSettings",
    "DeadlineExceeded",
    "DriverClient",
    "DriverServiceError",
    "DriverSession",
    "DriverSnapshot",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SyncDriverClient",
    "Unauthenticated",
    "Unavailable",
    "UploadReport",
    "channel_options",
    "from_rpc_error",
    "utc_from_ns",
]
