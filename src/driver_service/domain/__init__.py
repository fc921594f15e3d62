"""The domain: drivers, locations, statuses and their rules — no gRPC, no SQL."""

from driver_service.domain.errors import (
    DomainError,
    DriverNotFound,
    InvalidInput,
    RateLimited,
    ShuttingDown,
    StoreUnavailable,
)
from driver_service.domain.model import (
    INITIAL_STATUS,
    Driver,
    Location,
    Status,
    new_driver,
    new_location,
)
from driver_service.domain.rejections import Rejection
from driver_service.domain.validation import (
    DEFAULT_RULES,
    MAX_DRIVER_ID_LENGTH,
    LocationRules,
    parse_status,
    validate_driver_id,
    validate_location,
)

__all__ = [
    "DEFAULT_RULES",
    "INITIAL_STATUS",
    "MAX_DRIVER_ID_LENGTH",
    "DomainError",
    "Driver",
    "DriverNotFound",
    "InvalidInput",
    "Location",
    "LocationRules",
    "RateLimited",
    "Rejection",
    "ShuttingDown",
    "Status",
    "StoreUnavailable",
    "new_driver",
    "new_location",
    "parse_status",
    "validate_driver_id",
    "validate_location",
]
