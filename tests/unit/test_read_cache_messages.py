"""The state messages of the live-state script as the read cache reads them: a message it
does not understand is None (the entry is dropped, never half applied)."""

from __future__ import annotations

from driver_service.adapters.redis.read_cache import DROPPED, decode_state
from driver_service.domain import Driver, Location, Status

T = 1_717_200_000_123_456_789


def test_a_state_with_a_location_reads_back_exactly() -> None:
    payload = f"1717200000000001 BUSY {T} 52.52 13.405 8.5 90.0 {T - 5}".encode()
    assert decode_state("d1", payload) == (
        Driver("d1", Status.BUSY, Location("d1", 52.52, 13.405, 8.5, 90.0, T - 5), T),
        1717200000000001,
    )


def test_a_state_without_a_location() -> None:
    assert decode_state("d1", f"7 OFFLINE {T}".encode()) == (
        Driver("d1", Status.OFFLINE, None, T),
        7,
    )


def test_what_is_not_a_state_is_none() -> None:
    for payload in (
        DROPPED,
        b"",
        b"7 ASLEEP 1",
        b"x AVAILABLE 1",
        b"7 AVAILABLE 1 2.0",
        b"7 AVAILABLE 1 a b c d 5",
    ):
        assert decode_state("d1", payload) is None, payload
