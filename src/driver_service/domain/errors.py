"""Errors the application raises on purpose; `api/` maps each to one gRPC status code.

    DomainError
    ├── InvalidInput       the caller sent something we cannot accept (INVALID_ARGUMENT)
    ├── DriverNotFound     no event was ever accepted for this driver (NOT_FOUND)
    ├── ZoneNotFound       no such zone, or it was deleted (NOT_FOUND)
    ├── ZoneExists         a zone id already used, by a live or a deleted zone (ALREADY_EXISTS)
    ├── VersionMismatch    an update or delete expected another version (FAILED_PRECONDITION)
    ├── EventsExpired      a replay from an id older than the retained event log (OUT_OF_RANGE)
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


class ZoneNotFound(DomainError):
    def __init__(self, zone_id: str) -> None:
        super().__init__(f"zone {zone_id!r} not found")
        self.zone_id = zone_id


class ZoneExists(DomainError):
    """Zone ids are never reused, not even after a delete (events name zones by id)."""

    def __init__(self, zone_id: str) -> None:
        super().__init__(f"zone id {zone_id!r} is taken (by a zone, or a deleted one)")
        self.zone_id = zone_id


class VersionMismatch(DomainError):
    """Optimistic concurrency: the stored version is not the one the caller expected."""

    def __init__(self, zone_id: str, expected: int, stored: int) -> None:
        super().__init__(
            f"zone {zone_id!r} is at version {stored}, not the expected {expected}; "
            "read it again and retry"
        )


class EventsExpired(DomainError):
    """A replay asked for events the log's retention has already removed."""

    def __init__(self, after_id: int, oldest_id: int) -> None:
        super().__init__(
            f"after_id {after_id} is older than the retained event log: the oldest event "
            f"available is {oldest_id}; replay from after_id {oldest_id - 1} (or 0 for all of it)"
        )
        self.after_id = after_id
        self.oldest_id = oldest_id
