"""Generated request ids keep their shape (32 lowercase hex digits) and stay unique across
processes: a random prefix per process (and per forked child), then a count."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import textwrap

import pytest

from driver_service.interceptors import request_id


def test_new_ids_are_a_random_prefix_and_a_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 lowercase hex digits: 80 random bits drawn once per stream (process start, fork),
    then a count, across blocks of 4,096 ids."""
    monkeypatch.setattr(request_id, "_random_bits", random.Random(7).getrandbits)
    request_id.drop_ready_ids()
    prefix = f"{random.Random(7).getrandbits(80):020x}"
    for n in range(3 * 4096 + 5):
        made = request_id.new_request_id()
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        assert made == f"{prefix}{n:012x}"
    request_id.drop_ready_ids()


def test_each_stream_draws_its_own_prefix() -> None:
    """A new stream (a restart, a forked child) starts from a new random prefix."""
    first = request_id.new_request_id()
    request_id.drop_ready_ids()
    assert request_id.new_request_id()[:20] != first[:20]


def test_a_forked_child_makes_ids_of_its_own() -> None:
    """A forked child does not continue its parent's ids."""
    script = textwrap.dedent(
        """
        import os
        from driver_service.interceptors.request_id import new_request_id
        new_request_id()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, new_request_id().encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read, 64).decode()
        print(child, new_request_id())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(out) == 2
    assert out[0] != out[1]
