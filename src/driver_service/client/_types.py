"""What the client returns: plain values, not protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class DriverSnapshot:
    """GetDriver's answer: status and position as of `last_seen_at`."""

    driver_id: str
    status: str
    latitude: float
    longitude: float
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class UploadReport:
    """UploadLocations' summary: `persisted_count` updates were durably stored."""

    received_count: int
    persisted_count: int
    session_id: str


def utc_from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)
