"""A development server as `make run` starts it (scripts/dev-run.sh: mTLS, a token, data in a
relative directory), and the environment its printed `export` line sets: what a new user has
in the first hour, shared by the first-hour tests and the documented-commands test (the e2e
tier's `dev_server` fixture)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.ports import free_port
from tests.helpers.server_process import clean_env, is_serving

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPORT = re.compile(r"^\s*export (.*?)\\?$")


@dataclass
class DevServer:
    """`make run`'s server and the variables its `export` line sets."""

    proc: subprocess.Popen[str]
    env: dict[str, str]
    banner: str

    @property
    def target(self) -> str:
        return self.env["DRIVER_SERVICE_TARGET"]

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a terminal where the export line was pasted."""
        return clean_env({**self.env, "PATH": f"{BIN}:{os.environ['PATH']}", **extra})


def parse_export(banner: str) -> dict[str, str]:
    """The variables of the (backslash-continued) `export` line in `make run`'s banner."""
    lines = banner.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("export "))
    text = ""
    for line in lines[start:]:
        text += line.strip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    words = shlex.split(text)
    assert words[0] == "export"
    return dict(word.split("=", 1) for word in words[1:])


def start_dev_server(workdir: Path) -> DevServer:
    """Run scripts/dev-run.sh from `workdir` with a relative data directory, as `make run`
    does from the repository, on free ports; wait until it serves."""
    env = clean_env(
        {
            "BIN": str(BIN),
            "DATA": "data",
            "LISTEN": f"127.0.0.1:{free_port()}",
            "ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
            "HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        }
    )
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "dev-run.sh")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    banner = ""
    for line in proc.stdout:  # the banner ends with an empty line after the example command
        banner += line
        if "upload drv-1" in line:
            break
    variables = parse_export(banner)
    deadline = time.monotonic() + 30
    while not is_serving(env["ADMIN_LISTEN"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"make run's server did not start:\n{banner}")
        time.sleep(0.1)
    return DevServer(proc, variables, banner)


def stop_dev_server(server: DevServer) -> None:
    if server.proc.stdout is not None:
        server.proc.stdout.close()
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
