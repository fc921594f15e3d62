"""The fence an erasure leaves in Redis so that a rebuild cannot bring the driver back.

A rebuild (index_rebuild.py) reads a page of drivers from the store, then merges it into
Redis; an erasure in between deletes the driver from Redis, then from the store, then from
Redis again, and may finish before the page is merged. Without a fence that merge would
restore the erased driver's live hash (served for up to its week-long TTL) and its index
entry. So each of the erasure's passes sets `{prefix}drvgone:{digest}` for ERASURE_FENCE_S,
and a rebuild's merge leaves out every driver whose fence is up. Merges from live writes
ignore it: a driver of the same id that reports afterwards is served as any new driver.

The key holds a SHA-256 digest of the id, not the id, and nothing else; it expires on its
own, long after any rebuild page that could race the erasure is done.
"""

from __future__ import annotations

import hashlib

#: How long the fence stands: far longer than a rebuild page may take (dispatch/rebuild.py
#: bounds one at 10 s) between its store read, which may predate the erasure, and its merge.
ERASURE_FENCE_S = 600


def fence_key(prefix: str, driver_id: str) -> str:
    """The fence of `driver_id` under the deployment's key prefix."""
    return f"{prefix}drvgone:{hashlib.sha256(driver_id.encode()).hexdigest()}"
