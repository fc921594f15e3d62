"""Why an update was refused without being stored: the `reason` label of
`driver_service_updates_rejected_total`, and what an upload counts as received but not kept."""

from __future__ import annotations

import enum


class Rejection(enum.StrEnum):
    #: The update broke a rule of `validation` (range, time, driver id).
    INVALID = "invalid"
    #: The driver sent faster than its rate limit allows.
    RATE_LIMITED = "rate_limited"
    #: A different fix is already stored for the driver and timestamp (refused by the store).
    CONFLICT = "conflict"
