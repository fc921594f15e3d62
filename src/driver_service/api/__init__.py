"""The gRPC face of the service: servicers that translate between the wire and DriverTracking."""

from driver_service.api.servicer import DriverServicer

__all__ = ["DriverServicer"]
