"""What the private servers of tests (Redis, NATS) share: started on a free port that stays
theirs across restarts, ready once they answer, killed, paused (SIGSTOP) and resumed."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.ports import free_port


@dataclass
class PrivateServer:
    """One server process in its own temp dir `root`; subclasses say how to run it
    (`command`) and when it is ready (`answers`)."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    #: For messages: "redis-server", "nats-server".
    name = "server"

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

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
        raise RuntimeError(f"{self.name} did not start:\n{self._log_tail()}")

    def _start_once(self, timeout_s: float) -> bool:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None  # e.g. the port was taken meanwhile
                return False
            if self.answers():
                return True
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL (a paused server too): clients see their connections drop."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
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
