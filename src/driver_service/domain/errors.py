"""Errors the application raises on purpose; `api/` maps each to one gRPC status code.

    DomainError
    ├── InvalidInput       the caller sent something we cannot accept (INVALID_ARGUMENT)
    ├── DriverNotFound     no event was ever accepted for this driver (NOT_FOUND)
    ├── RateLimited        a driver sends faster than allowed (RESOURCE_EXHAUSTED)
    ├── StoreUnavailable   durable storage failed; retry later (UNAVAILABLE)
    └── ShuttingDown       this server is stopping; reconnect elsewhere (UNAVAILABLE)

Anything else escaping the service is a bug and becomes INTERNAL with no details.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the service raises deliberately."""


class InvalidInput(DomainError):
    """The request breaks a documented rule; the message says which field and why."""


class DriverNotFound(DomainError):
    def __init__(self, driver_id: str) -> None:
        super().__init__(f"driver {driver_id!r} not found")
        self.driver_id = driver_id


class RateLimited(DomainError):
    """Too many updates from one driver; in a stream the update is dropped and counted."""


class StoreUnavailable(DomainError):
    """Storage could not complete the operation; nothing is acknowledged that was not stored."""


class ShuttingDown(DomainError):
    """The server is draining; clients should reconnect to another replica."""
