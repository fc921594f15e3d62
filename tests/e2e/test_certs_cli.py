"""`driver-service certs init` and `token issue` as subprocesses: files, modes, SANs, a token
the validator accepts."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from driver_service.security import TokenValidator

# The two commands' own parsers, so this test does not depend on cli/__init__ wiring.
_RUNNER = (
    "import argparse, sys\n"
    "from driver_service.cli import certs_command, token_command\n"
    "p = argparse.ArgumentParser(prog='driver-service')\n"
    "c = p.add_subparsers(dest='command', required=True)\n"
    "certs_command.register(c)\n"
    "token_command.register(c)\n"
    "a = p.parse_args()\n"
    "sys.exit(a.run(a))\n"
)
CLI = [sys.executable, "-c", _RUNNER]


def test_certs_init_writes_ca_server_and_client(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    done = subprocess.run(
        [*CLI, "certs", "init", str(out), "--name", "drivers.example"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--tls-client-ca" in done.stdout
    for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key"):
        assert (out / name).is_file()
    for key in ("server.key", "client.key", "ca.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "drivers.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    again = subprocess.run(
        [*CLI, "certs", "init", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 1
    assert "--force" in again.stderr


def test_token_issue_makes_a_valid_driver_token(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 40 + "\n")
    done = subprocess.run(
        [*CLI, "token", "issue", "--driver", "d-7", "--ttl", "5m", "--secret-file", str(secret)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    principal = TokenValidator.from_secret_file(secret).validate(done.stdout.strip())
    assert (principal.kind, principal.subject) == ("driver", "d-7")
