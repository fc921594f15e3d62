"""The secure default end to end: `certs init`, `token issue`, `serve` with mTLS and token
auth as a subprocess, and the CLI with and without the right credentials."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service.security import channel_credentials
from tests.helpers.ports import free_port
from tests.helpers.server_process import Launcher, clean_env

pytestmark = pytest.mark.e2e


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver_service", *args],
        capture_output=True, text=True, timeout=60, env=clean_env(env), check=False,
    )  # fmt: skip


def wait_tls_ready(target: str, certs: Path, launcher_log: Path) -> None:
    creds = channel_credentials(certs / "ca.crt", certs / "client.crt", certs / "client.key")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with grpc.secure_channel(target, creds) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="driver.v1.DriverService"), timeout=0.5
                )
            except grpc.RpcError:
                time.sleep(0.1)
                continue
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        return
    pytest.fail(f"TLS server not ready:\n{launcher_log.read_text()}")


def test_mtls_and_tokens_from_the_cli(launcher: Launcher, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert cli("certs", "init", str(certs)).returncode == 0
    secret = tmp_path / "token.secret"
    secret.write_text("a-development-secret-of-at-least-32-bytes")
    writer = cli("token", "issue", "--scope", "drivers:read", "--scope", "drivers:write",
                 "--secret-file", str(secret))  # fmt: skip
    assert writer.returncode == 0, writer.stderr
    reader = cli("token", "issue", "--scope", "drivers:read", "--secret-file", str(secret))
    target = f"127.0.0.1:{free_port()}"
    server = launcher.spawn(
        ["--listen", target, "--data-dir", str(tmp_path / "data"), "--admin-listen", "",
         "--tls-cert", str(certs / "server.crt"),
         "--tls-key", str(certs / "server.key"), "--tls-client-ca", str(certs / "ca.crt"),
         "--token-secret-file", str(secret)],
        target,
    )  # fmt: skip
    wait_tls_ready(target, certs, server.log_path)
    tls = {
        "DRIVER_SERVICE_TARGET": target,
        "DRIVER_SERVICE_CLIENT_CA": str(certs / "ca.crt"),
        "DRIVER_SERVICE_CLIENT_CERT": str(certs / "client.crt"),
        "DRIVER_SERVICE_CLIENT_KEY": str(certs / "client.key"),
    }
    upload = cli("upload", "sec-1", "--route", "--points", "5",
                 env={**tls, "DRIVER_SERVICE_TOKEN": writer.stdout.strip()})  # fmt: skip
    assert upload.returncode == 0, upload.stderr
    got = cli("get", "sec-1", "--json", env={**tls, "DRIVER_SERVICE_TOKEN": reader.stdout.strip()})
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["driver_id"] == "sec-1"

    no_token = cli("get", "sec-1", env=tls)
    assert no_token.returncode == 1
    assert "UNAUTHENTICATED" in no_token.stderr
    read_env = {**tls, "DRIVER_SERVICE_TOKEN": reader.stdout.strip()}
    read_token_writing = cli("upload", "sec-2", "--route", "--points", "2", env=read_env)
    assert read_token_writing.returncode == 1
    assert "PERMISSION_DENIED" in read_token_writing.stderr
    no_client_cert = {k: v for k, v in tls.items() if "CLIENT_CERT" not in k and "KEY" not in k}
    no_cert_env = {**no_client_cert, "DRIVER_SERVICE_TOKEN": reader.stdout.strip()}
    refused = cli("get", "sec-1", "--timeout", "2", env=no_cert_env)
    assert refused.returncode == 1
    assert "UNAVAILABLE" in refused.stderr
    plaintext = {"DRIVER_SERVICE_TARGET": target, "DRIVER_SERVICE_TOKEN": reader.stdout.strip()}
    assert cli("get", "sec-1", "--timeout", "2", env=plaintext).returncode == 1
