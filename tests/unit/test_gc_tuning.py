"""The server settles its heap once before serving: start-up state frozen out of the
collector's sight, young objects collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from driver_service.server.heap import OLDER_THRESHOLDS, YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_settle_heap_freezes_what_survived_and_raises_the_young_threshold() -> None:
    loaded_state = [{"driver": n} for n in range(1_000)]  # what a server loads at start
    settle_heap()
    assert gc.get_freeze_count() >= len(loaded_state)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


@pytest.mark.usefixtures("restored_gc")
def test_garbage_cycles_made_after_settling_are_still_collected() -> None:
    settle_heap()

    class Node:
        partner: object = None

    a, b = Node(), Node()
    a.partner, b.partner = b, a
    del a, b
    assert gc.collect() >= 2
