"""A private PostgreSQL server for tests: started from the installed binaries on a free port in a
temp dir, so tests can stop, kill and restart it without touching anyone else's database.

The fixtures of tests/conftest.py start one per test session (per xdist worker) and give each
test a fresh database; bench/ starts its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.helpers.ports import free_port

POSTGRES_MISSING = "PostgreSQL server binaries not found: apt-get install postgresql"
_SEARCH_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin")


def find_postgres_binaries() -> tuple[Path, Path] | None:
    """(initdb, postgres) from PATH or the Debian layout; None when not installed."""
    initdb = shutil.which("initdb")
    postgres = shutil.which("postgres")
    if initdb and postgres:
        return Path(initdb), Path(postgres)
    for directory in (*_SEARCH_DIRS, *sorted(glob.glob("/usr/lib/postgresql/*/bin"))):
        pair = (Path(directory) / "initdb", Path(directory) / "postgres")
        if all(p.is_file() and os.access(p, os.X_OK) for p in pair):
            return pair
    return None


def _run_as() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in its own directory; the port stays the same across restarts."""

    root: Path
    initdb: Path
    postgres: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    user: tuple[int, int] | None = field(default_factory=_run_as)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def create(cls) -> PostgresServer:
        """initdb a fresh cluster (trust auth, C locale) in a new temp dir."""
        binaries = find_postgres_binaries()
        if binaries is None:
            pytest.fail(POSTGRES_MISSING, pytrace=False)
        root = Path(tempfile.mkdtemp(prefix="pg-"))
        server = cls(root, *binaries)
        server.socket_dir.mkdir()
        if server.user is not None:
            for path in (root, server.socket_dir):
                os.chown(path, *server.user)
        result = subprocess.run(
            [
                *server._as_user(),
                str(server.initdb),
                "-D",
                str(server.data_dir),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # the cluster is thrown away; the server itself runs fsync=on
            ],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {result.stderr.decode(errors='replace')}")
        return server

    def _as_user(self) -> list[str]:
        """The prefix that runs a command as `user`: setpriv (util-linux) drops to its ids and
        execs the command, so Popen may vfork(); its own user/group arguments make it fork(),
        which runs gRPC's fork handlers in the child while the test process has gRPC
        threads, and the child can die before it reaches exec (seen once: a restart of the
        cluster in tests/e2e/test_scale_out.py failed with nothing in PostgreSQL's log)."""
        if self.user is None:
            return []
        uid, gid = self.user
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start on the server's port (a free one the first time) and wait until it is ready."""
        if self.running:
            return
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            if self.port == 0 or attempt > 0:
                self.port = free_port()
            if self._start_once(timeout_s):
                return
        raise RuntimeError(f"PostgreSQL did not start:\n{self._log_tail()}")

    def _start_once(self, timeout_s: float) -> bool:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    *self._as_user(),
                    str(self.postgres),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.socket_dir),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=on",
                    "-c",
                    "max_connections=60",
                    "-c",
                    "shared_buffers=32MB",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: kill() reaches every backend
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # Line 1 is the pid (a killed server leaves its old file behind), line 8 the
                # postmaster status, as `pg_ctl -w` reads them.
                if (
                    len(lines) >= 8
                    and lines[0].strip() == str(self.process.pid)
                    and lines[7].strip() == "ready"
                ):
                    return True
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"PostgreSQL not ready after {timeout_s} s:\n{self._log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, committed data stays."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.process = None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, like a crashed machine minus the disk."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the postmaster, then every backend: a hung server (sockets open, no
        answers). Backends run in sessions of their own (setsid), so each is signalled."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, signum: int) -> None:
        if self.process is None:
            return
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def destroy(self) -> None:
        """Throw the cluster away (killed: a clean shutdown would fsync every database)."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return ""


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (parents before children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command may contain spaces and parentheses: the fields after its last ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


async def create_database(server: PostgresServer) -> str:
    """A fresh, empty database on `server`; return its URL."""
    name = f"test_{uuid.uuid4().hex[:20]}"
    admin = await asyncpg.connect(server.url(), timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    return server.url(name)
