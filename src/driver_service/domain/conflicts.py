"""One fix per driver and timestamp: the first stored wins, and stored data never changes.

A resend of the same fix (same driver, timestamp, coordinates, speed and heading) is the
same row: storing it again is a no-op that succeeds. A different fix for a driver and
timestamp already stored (or stored earlier in the same batch) is a conflict: it is
refused, so it is never stored, never the current location, never published, and not
counted as persisted. Conflicts are rare, so adapters find them only when a batch inserted
fewer history rows than it had updates (`refused_updates`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from driver_service.domain.model import Location

#: A history row's identity: driver id and fix time in ns.
FixKey = tuple[str, int]


def may_be_stored_already(location: Location, newest_before_ns: int | None) -> bool:
    """Whether a row for this fix's key can predate the batch: history never holds a fix
    newer than its driver's current location (both change in one transaction), so only a
    fix at or before the current one (`newest_before_ns`, None: no location yet) can."""
    return newest_before_ns is not None and location.recorded_at_ns <= newest_before_ns


def refused_updates(
    batch: Sequence[Location], stored: Mapping[FixKey, Location]
) -> tuple[Location, ...]:
    """The updates of `batch` whose values differ from the fix stored for their key, in
    batch order. `stored` holds the stored row for every key that may predate the batch
    (see may_be_stored_already); any other key's row is the batch's first copy."""
    winners = dict(stored)
    refused: list[Location] = []
    for location in batch:
        winner = winners.setdefault((location.driver_id, location.recorded_at_ns), location)
        if winner is not location and winner != location:
            refused.append(location)
    return tuple(refused)
