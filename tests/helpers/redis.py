"""A private Redis for tests: started from /usr/bin/redis-server on a free port in a temp dir,
so tests can kill and restart it without touching the machine's shared Redis.

The fixtures of tests/conftest.py start one per test session (per xdist worker) and give each
test its own key and channel prefix; fault tests that kill the server use `private_redis`, a
server of their own.
"""

from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.private_server import PrivateServer

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_MISSING = "redis-server not found: apt-get install redis-server"


def _answers_ping(port: int) -> bool:
    """A raw RESP PING, so readiness does not depend on the client library under test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer(PrivateServer):
    """One redis-server process without persistence; keeps its port across restarts."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def create(cls) -> RedisServer:
        if not REDIS_SERVER.is_file():
            pytest.fail(REDIS_MISSING, pytrace=False)
        return cls(Path(tempfile.mkdtemp(prefix="redis-")))

    def command(self) -> list[str]:
        return [
            str(REDIS_SERVER), "--save", "", "--appendonly", "no", "--port", str(self.port),
            "--bind", "127.0.0.1", "--dir", str(self.root),
        ]  # fmt: skip

    def answers(self) -> bool:
        return _answers_ping(self.port)
