"""A private Redis for tests: started from /usr/bin/redis-server on a free port in a temp dir,
so tests can kill and restart it without touching the machine's shared Redis.

The fixtures of tests/conftest.py start one per test session (per xdist worker) and give each
test its own key and channel prefix; fault tests that kill the server use `private_redis`, a
server of their own.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.ports import free_port

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
