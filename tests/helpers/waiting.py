"""Waiting in async tests for something another task or process makes true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def eventually(
    predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll until `predicate()` holds; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)
