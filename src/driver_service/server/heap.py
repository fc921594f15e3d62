"""Garbage-collector settings for a long-running server process.

Every call allocates a few dozen short-lived container objects (tuples, frames' locals,
protobuf wrappers); with CPython's default first-generation threshold (700) the collector
runs every few calls and each run also visits whatever survived into the older
generations. What the server loaded at start (every driver's state, imported modules) never
becomes garbage: frozen, the collector stops visiting it. A larger first-generation
threshold runs the collector a hundred times less often for a few MB more of young objects.
Measured (bench/instructions.py): ~10 k of ~315 k instructions per GetDriver call.
"""

from __future__ import annotations

import gc

#: Collections of the youngest generation happen after this many net allocations.
YOUNG_THRESHOLD = 50_000
#: Youngest-generation collections per middle-generation one; middle per oldest.
OLDER_THRESHOLDS = (20, 20)


def settle_heap() -> None:
    """Call once the process has loaded its state and is about to serve: collect what start-up
    left behind, move everything that survived out of the collector's sight, and collect
    young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
