"""A private Redis for tests: started from /usr/bin/redis-server on a free port in a temp dir,
so tests can kill and restart it without touching the machine's shared Redis.

One server per test session (per xdist worker); each test gets its own key and channel prefix.
Fault tests that kill the server use `private_redis`, a server of their own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from driver_service.adapters.redis.connection import create_redis_client

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_MISSING = "redis-server not found: apt-get install redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    """A raw RESP PING, so readiness does not depend on the client library under test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process without persistence; keeps its port across restarts."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.root / "redis.log"

    @classmethod
    def create(cls) -> RedisServer:
        if not REDIS_SERVER.is_file():
            pytest.fail(REDIS_MISSING, pytrace=False)
        return cls(Path(tempfile.mkdtemp(prefix="redis-")))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start on the server's port (a free one the first time) and wait until it answers."""
        if self.running:
            return
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            if self.port == 0 or attempt > 0:
                self.port = free_port()
            if self._start_once(timeout_s):
                return
        raise RuntimeError(f"redis-server did not start:\n{self._log_tail()}")

    def _start_once(self, timeout_s: float) -> bool:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    str(REDIS_SERVER),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None  # e.g. the port was taken meanwhile
                return False
            if _answers_ping(self.port):
                return True
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"redis-server not ready after {timeout_s} s:\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL: clients see their connections drop, all data is gone (no persistence)."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: a hung server; connections stay open and nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause(): the server answers what queued up meanwhile."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return ""


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's private Redis (one per xdist worker)."""
    server = RedisServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test alone, for tests that kill and restart it."""
    server = RedisServer.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def redis_prefix() -> str:
    """Keys and channels of this test only: tests share the session's server."""
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the session's server, restarted first if a previous test killed it."""
    redis_server.start()
    client = create_redis_client(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()
