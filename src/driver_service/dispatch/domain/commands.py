"""Commands on their way to drivers (ride offers, navigation updates) and their states.

QUEUED ──session opens──▶ DELIVERED ──driver answers──▶ ACCEPTED | DECLINED
  │                          │ (offers only; a navigation update is final once delivered)
  └─ttl─▶ EXPIRED            └─ttl─▶ TIMED_OUT
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from driver_service.domain import DomainError


class CommandState(enum.Enum):
    QUEUED = 1
    DELIVERED = 2
    ACCEPTED = 3
    DECLINED = 4
    EXPIRED = 5
    TIMED_OUT = 6


FINAL_STATES = frozenset(
    {CommandState.ACCEPTED, CommandState.DECLINED, CommandState.EXPIRED, CommandState.TIMED_OUT}
)


class CommandNotFound(DomainError):
    """No command with this id (never sent, or its outcome was forgotten)."""


class NotOfferRecipient(DomainError):
    """A driver answered an offer that was sent to another driver."""


class OfferNotOpen(DomainError):
    """The offer cannot be answered now: not delivered yet, or already final."""


@dataclass(slots=True, eq=False)
class Command:
    """One command and where it is; `payload` is opaque here (the servicer's message)."""

    command_id: str
    driver_id: str
    payload: object
    is_offer: bool
    expires_at_ns: int
    state: CommandState = CommandState.QUEUED
    delivered_at_ns: int | None = None
    settled_at_ns: int | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES
