"""`python -m driver_service serve` as a real subprocess: started on a free port, ready once its
health check answers, sent signals, killed; the environment it runs in has no DRIVER_SERVICE_*
setting of the developer's shell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service.server.config import ENV_PREFIX
from tests.helpers.ports import free_port

READY_TIMEOUT_S = 20.0


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any DRIVER_SERVICE_* setting leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra or {})
    return env


def serve_command(*args: str) -> list[str]:
    """`serve` with the given flags; the admin port is a free one unless the test sets it
    (the default, 9090, would collide between tests running in parallel)."""
    admin = [] if "--admin-listen" in args else ["--admin-listen", "127.0.0.1:0"]
    return [sys.executable, "-m", "driver_service", "serve", *admin, *args]


def is_serving(target: str, timeout_s: float = 0.5) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="driver.v1.DriverService"),
                timeout=timeout_s,
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class ServerProcess:
    """One `driver-service serve` subprocess, its address and its captured stderr."""

    proc: subprocess.Popen[bytes]
    target: str
    log_path: Path

    @property
    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"server exited with {self.proc.returncode} before serving:\n{self.stderr}"
                )
            if is_serving(self.target):
                return self
            time.sleep(0.05)
        pytest.fail(f"server not serving on {self.target} after {timeout_s} s:\n{self.stderr}")

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)


@dataclass
class Launcher:
    """Starts servers for one test (or module) and kills whatever is still running at the end
    (`kill_all`; the e2e tier's `launcher` fixture does it at teardown)."""

    tmp_path: Path
    started: list[ServerProcess] = field(default_factory=list)

    def spawn(
        self,
        args: Sequence[str],
        target: str = "",
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        log_path = self.tmp_path / f"server-{len(self.started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                serve_command(*args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(env),
            )
        server = ServerProcess(proc, target, log_path)
        self.started.append(server)
        return server

    def start(self, data_dir: Path, *extra: str) -> ServerProcess:
        """Start an insecure server on a free loopback port and wait until it serves."""
        port = free_port()
        target = f"127.0.0.1:{port}"
        args = ["--insecure", "--listen", target, "--data-dir", str(data_dir), *extra]
        return self.spawn(args, target).wait_ready()

    def start_replicas(self, count: int, store: str, bus: str, *extra: str) -> list[ServerProcess]:
        """`count` replicas sharing the PostgreSQL `store` and the Redis `bus`, each with a
        data directory of its own."""
        replicas = []
        for _ in range(count):
            data = self.tmp_path / f"replica-{len(self.started)}"
            data.mkdir()
            replicas.append(self.start(data, "--store", store, "--bus", bus, *extra))
        return replicas

    def run_to_exit(
        self, args: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = 20.0
    ) -> tuple[int, str]:
        """Run a `serve` that is expected to exit on its own; return (code, output)."""
        server = self.spawn(args, env=env)
        code = server.wait(timeout_s)
        return code, server.stderr

    def kill_all(self) -> None:
        for server in self.started:
            server.kill()
