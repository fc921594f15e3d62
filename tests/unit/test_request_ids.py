"""Generated request ids keep their shape: 32 lowercase hex digits, 128 random bits."""

from __future__ import annotations

import random
import re

import pytest

from driver_service.interceptors import request_id


def test_a_new_id_is_the_hex_of_128_random_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same ids as formatting the bits with `:032x` (as ids were made before)."""
    monkeypatch.setattr(request_id, "_random_bits", random.Random(7).getrandbits)
    expected = random.Random(7)
    for _ in range(200):
        made = request_id.new_request_id()
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        assert made == f"{expected.getrandbits(128):032x}"
