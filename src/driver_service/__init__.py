"""driver-service: driver locations, availability, live tracking and sessions over gRPC."""

from driver_service.config import ServerSettings
from driver_service.domain import Driver, Location, Status
from driver_service.service import DriverTracking

__all__ = ["Driver", "DriverTracking", "Location", "ServerSettings", "Status"]
__version__ = "0.1.0"
