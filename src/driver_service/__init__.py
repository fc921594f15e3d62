"""driver-service: driver locations, availability, live tracking and sessions over gRPC.

The package's names are loaded on first use, not at import: `import driver_service.client`
imports this package first, and a client must not load the server (its config, service and
their dependencies) with it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from driver_service.app.tracking import DriverTracking
    from driver_service.domain import Driver, Location, Status
    from driver_service.server.config import ServerSettings

__all__ = ["Driver", "DriverTracking", "Location", "ServerSettings", "Status"]
__version__ = "0.1.0"

_HOMES = {
    "Driver": "driver_service.domain",
    "DriverTracking": "driver_service.app.tracking",
    "Location": "driver_service.domain",
    "ServerSettings": "driver_service.server.config",
    "Status": "driver_service.domain",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
