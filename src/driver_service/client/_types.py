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
    """What an upload achieved: `persisted_count` updates were durably stored.

    `DriverClient.upload()` sums the summaries of its chunks (one UploadLocations call each,
    `chunks` in all; `session_id` is the first chunk's); `retries` counts chunk calls that
    failed and were sent again. Each acknowledged chunk is counted once."""

    received_count: int
    persisted_count: int
    session_id: str
    chunks: int = 1
    retries: int = 0


def utc_from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)
