"""`serve --workers N`: N server processes sharing one port (SO_REUSEPORT), supervised.

Workers are started as fresh interpreters rather than forked: gRPC's core must not be
inherited across fork, and a fresh process gets its own event loop, store pool and bus
connection. The effective settings travel in `DRIVER_SERVICE_*` variables, so a worker
loads exactly what the supervisor validated. The supervisor binds nothing itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from driver_service.server.config import ServerSettings, env_name, setting_fields

log = logging.getLogger(__name__)

WORKER_ENV = "DRIVER_SERVICE_WORKER_INDEX"
#: The supervisor's pid, so a worker notices when it is gone (killed, OOM) and stops.
SUPERVISOR_ENV = "DRIVER_SERVICE_SUPERVISOR_PID"
#: How often a worker checks that its supervisor is still its parent.
SUPERVISOR_CHECK_S = 0.5
#: A worker that dies sooner than this after its start counts towards giving up.
QUICK_EXIT_S = 5.0
MAX_QUICK_EXITS = 3


def worker_index() -> int | None:
    """This process's worker number, if a supervisor started it."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None else None


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def worker_environment(settings: ServerSettings, index: int) -> dict[str, str]:
    """The environment of worker `index`: every effective setting, with workers=1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVER_SERVICE_")}
    for f in setting_fields():
        value = getattr(settings, f.name)
        if f.name == "workers":
            value = 1
        if value is not None:
            env[env_name(f.name)] = _encode(value)
    env[WORKER_ENV] = str(index)
    env[SUPERVISOR_ENV] = str(os.getpid())
    return env


def watch_supervisor() -> threading.Thread | None:
    """In a worker, stop gracefully (SIGTERM to itself) once the supervisor is gone.

    Workers run in sessions of their own (a terminal's Ctrl-C reaches only the supervisor),
    so a supervisor killed with SIGKILL or by the OOM killer would leave them serving its
    ports forever, beside any new supervisor's workers. A daemon thread polls the parent pid:
    portable, and a thread keeps working while the event loop is busy."""
    expected = os.environ.get(SUPERVISOR_ENV)
    if worker_index() is None or expected is None:
        return None
    supervisor = int(expected)

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(SUPERVISOR_CHECK_S)
        log.warning("supervisor (pid %d) is gone: stopping this worker", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    return thread


class Supervisor:
    """Starts the workers, restarts one that dies, forwards SIGTERM/SIGINT once."""

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self._stopping = False
        self._quick_exits = 0

    def _spawn(self, index: int) -> None:
        # A new session: a terminal's Ctrl-C reaches only the supervisor, which forwards it
        # once (a second signal would make a worker exit at once).
        proc = subprocess.Popen(
            [sys.executable, "-m", "driver_service", "serve"],
            env=worker_environment(self._settings, index),
            start_new_session=True,
        )
        self._workers[index] = (proc, time.monotonic())
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _forward(self, signum: int) -> None:
        if self._stopping:
            log.warning("second %s: killing workers", signal.Signals(signum).name)
            for proc, _ in self._workers.values():
                proc.kill()
            return
        self._stopping = True
        log.info(
            "%s received: stopping %d workers", signal.Signals(signum).name, len(self._workers)
        )
        for proc, _ in self._workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._forward, signum)
        for index in range(self._settings.workers):
            self._spawn(index)
        failed = False
        while self._workers:
            await asyncio.sleep(0.2)
            for index, (proc, started) in list(self._workers.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self._workers[index]
                if self._stopping:
                    # A worker still starting up dies of the SIGTERM itself: nothing of it
                    # was acknowledged yet, so that is a clean stop too.
                    failed |= code not in (0, -signal.SIGTERM)
                    continue
                log.error("worker %d (pid %d) exited with %d", index, proc.pid, code)
                self._quick_exits = (
                    self._quick_exits + 1 if time.monotonic() - started < QUICK_EXIT_S else 0
                )
                if self._quick_exits >= MAX_QUICK_EXITS:
                    log.error("workers keep exiting at start: giving up")
                    failed = True
                    self._forward(signal.SIGTERM)
                    continue
                self._spawn(index)
        return 1 if failed else 0
