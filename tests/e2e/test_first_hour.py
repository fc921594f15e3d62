"""The first hour of a new user (issue "first hour"), one test per mistake seen: every start-up
failure is one line naming the setting (exit 2), client mistakes say what is wrong on the
client's side, and what `make run` prints works as written."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver_service.client import DriverClient
from driver_service.domain import Location
from tests.helpers.dev_server import REPO, DevServer
from tests.helpers.ports import free_port
from tests.helpers.postgres import PostgresServer
from tests.helpers.server_process import Launcher, clean_env

pytestmark = pytest.mark.e2e


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver_service", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        input=stdin,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def one_line(output: str) -> str:
    """The single line a mistake must give: no traceback, no log lines around it."""
    assert "Traceback" not in output, output
    assert "Handshake failed" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


# --- 1. start-up failures: one line naming the setting, exit 2 -------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_admin_port_taken_is_one_line(launcher: Launcher, data_dir: Path, taken_port: int) -> None:
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir),
         "--admin-listen", f"127.0.0.1:{taken_port}"]
    )  # fmt: skip
    assert code == 2
    line = one_line(output)
    assert line.startswith(f"driver-service serve: --admin-listen 127.0.0.1:{taken_port}: ")
    assert "already in use" in line


def test_main_port_taken_is_one_line(launcher: Launcher, data_dir: Path, taken_port: int) -> None:
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", f"127.0.0.1:{taken_port}", "--data-dir", str(data_dir)]
    )
    assert code == 2
    line = one_line(output)
    assert line.startswith(f"driver-service serve: --listen 127.0.0.1:{taken_port}: ")
    assert "already in use" in line


def test_postgres_unreachable_is_one_line(launcher: Launcher) -> None:
    url = f"postgresql://app:secret@127.0.0.1:{free_port()}/drivers"
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", f"127.0.0.1:{free_port()}", "--store", url]
    )
    assert code == 2
    line = one_line(output)
    assert "--store postgresql://app:****@127.0.0.1:" in line
    assert "connection refused" in line
    assert "secret" not in line


@pytest.mark.parametrize(
    ("user", "database", "says"),
    [("nobody-here", "postgres", "authentication failed"), ("postgres", "absent", "not exist")],
)
def test_postgres_wrong_credentials_or_database_is_one_line(
    launcher: Launcher, postgres_server: PostgresServer, user: str, database: str, says: str
) -> None:
    postgres_server.start()
    url = f"postgresql://{user}@127.0.0.1:{postgres_server.port}/{database}"
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", f"127.0.0.1:{free_port()}", "--store", url]
    )
    assert code == 2
    line = one_line(output)
    assert line.startswith("driver-service serve: --store postgresql://")
    assert says in line


def test_tls_material_mistake_is_one_line(
    launcher: Launcher, data_dir: Path, tmp_path: Path
) -> None:
    cli("certs", "init", str(tmp_path / "a"))
    cli("certs", "init", str(tmp_path / "b"))
    secret = tmp_path / "secret"
    secret.write_text("x" * 64)
    code, output = launcher.run_to_exit(
        ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir),
         "--tls-cert", str(tmp_path / "a" / "server.crt"),
         "--tls-key", str(tmp_path / "b" / "server.key"),  # another pair's key
         "--tls-client-ca", str(tmp_path / "a" / "ca.crt"), "--token-secret-file", str(secret)]
    )  # fmt: skip
    assert code == 2
    line = one_line(output)
    assert "--tls-key" in line
    assert "does not match" in line


def test_bus_mistake_is_one_line(launcher: Launcher, data_dir: Path) -> None:
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir),
         "--bus", "rabbitmq://127.0.0.1/"]
    )  # fmt: skip
    assert code == 2
    assert "--bus" in one_line(output)


# --- 2. certs init prints flags the CLI takes ------------------------------------------------


def test_certs_init_prints_client_flags_that_work(dev_server: DevServer, tmp_path: Path) -> None:
    done = cli("certs", "init", str(tmp_path / "certs"))
    assert done.returncode == 0, done.stderr
    client_line = next(line for line in done.stdout.splitlines() if "client:" in line)
    flags = client_line.split("client:", 1)[1].split()
    assert flags[0::2] == ["--ca", "--cert", "--key"]
    # The flags parse (a wrong flag exits 2 from argparse); this CA does not sign the server.
    got = cli("get", "drv-x", "--target", dev_server.target, *flags)
    assert got.returncode == 1, got.stderr
    assert "not signed by the CA" in one_line(got.stderr)


# --- 3. the client library takes the CLI's settings ------------------------------------------

LIBRARY_EXAMPLE = """
import asyncio
from driver_service.client import DriverClient, NotFound, SyncDriverClient

async def main() -> None:
    async with DriverClient.from_env() as client:
        try:
            await client.get_driver("lib-unknown")
        except NotFound:
            print("async: not found")

with SyncDriverClient.from_env() as sync_client:
    print("sync:", sync_client.get_driver("drv-lib").status)
asyncio.run(main())
"""


def test_client_library_works_with_the_export_line(dev_server: DevServer) -> None:
    env = dev_server.client_env()
    assert cli("session", "drv-lib", env=env, stdin="status BUSY\nping\n").returncode == 0
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_EXAMPLE],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["sync: BUSY", "async: not found"]


def test_the_export_line_reads_history_and_erases(dev_server: DevServer) -> None:
    """The console's token (`make run`) carries history:read and drivers:forget: the printed
    `history` and `trips` commands and `forget` run as an operator would type them."""
    env = dev_server.client_env()
    done = cli("upload", "drv-hist", "--route", "--points", "20", env=env)
    assert done.returncode == 0, done.stderr
    trail = cli("history", "drv-hist", "--since", "1h", "--format", "json", env=env)
    assert trail.returncode == 0, trail.stderr
    assert len(trail.stdout.strip().splitlines()) == 20
    trips = cli("trips", "drv-hist", "--since", "1h", env=env)
    assert trips.returncode == 0, trips.stderr
    gone = cli("forget", "drv-hist", "--yes", env=env)
    assert gone.returncode == 0, gone.stderr
    assert "20 history fixes" in gone.stdout


# --- 4. client-side TLS mistakes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("unset", "says"),
    [
        (("DRIVER_SERVICE_CLIENT_CERT", "DRIVER_SERVICE_CLIENT_KEY"), "requires a client cert"),
        (
            ("DRIVER_SERVICE_CLIENT_CA", "DRIVER_SERVICE_CLIENT_CERT", "DRIVER_SERVICE_CLIENT_KEY"),
            "probably requires TLS",
        ),
    ],
    ids=["no-client-certificate", "plaintext-client"],
)
def test_client_tls_mistake_says_what_to_change(
    dev_server: DevServer, unset: tuple[str, ...], says: str
) -> None:
    env = {k: v for k, v in dev_server.client_env().items() if k not in unset}
    done = cli("get", "drv-1", env=env)
    assert done.returncode == 1
    assert says in one_line(done.stderr)


def test_untrusted_server_and_tls_against_plaintext(
    dev_server: DevServer, launcher: Launcher, data_dir: Path, tmp_path: Path
) -> None:
    cli("certs", "init", str(tmp_path / "other"))
    env = dev_server.client_env(DRIVER_SERVICE_CLIENT_CA=str(tmp_path / "other" / "ca.crt"))
    untrusted = cli("get", "drv-1", env=env)
    assert untrusted.returncode == 1
    assert "server's certificate is not signed by the CA" in one_line(untrusted.stderr)
    plain = launcher.start(data_dir)
    mismatch = cli("get", "drv-1", env=dev_server.client_env(DRIVER_SERVICE_TARGET=plain.target))
    assert mismatch.returncode == 1
    assert "plaintext server" in one_line(mismatch.stderr)


def test_missing_client_file_names_the_setting(dev_server: DevServer) -> None:
    done = cli("get", "drv-1", env=dev_server.client_env(DRIVER_SERVICE_CLIENT_CERT="/nope.crt"))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "/nope.crt" in line
    assert "DRIVER_SERVICE_CLIENT_CERT" in line


# --- 5. the export line works from any directory ---------------------------------------------


def test_export_line_has_absolute_paths(dev_server: DevServer, tmp_path: Path) -> None:
    for name in ("DRIVER_SERVICE_CLIENT_CA", "DRIVER_SERVICE_CLIENT_CERT"):
        assert Path(dev_server.env[name]).is_absolute(), dev_server.banner
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = cli("get", "nobody-yet", env=dev_server.client_env(), cwd=elsewhere)
    assert done.returncode == 1
    assert "NOT_FOUND" in one_line(done.stderr)


# --- 6. config show shows the settings and lists what is missing -----------------------------


EXAMPLE_CONFIG = str(REPO / "deploy" / "config.example.toml")


@pytest.mark.parametrize("args", [[], ["--config", EXAMPLE_CONFIG]], ids=["bare", "example"])
def test_config_show_shows_settings_and_lists_what_is_missing(
    args: list[str], tmp_path: Path
) -> None:
    done = cli("config", "show", *args, cwd=tmp_path)
    assert done.returncode == 2
    shown = json.loads(done.stdout)
    assert shown["listen"] == "0.0.0.0:50051"
    assert shown["sqlite_file"] == str(tmp_path / "data" / "driver-service.sqlite3")
    assert "Traceback" not in done.stderr
    problems = done.stderr.splitlines()[1:]
    assert problems
    assert all(line.startswith("driver-service config show: --") or "required" in line
               for line in problems), done.stderr  # fmt: skip
    assert any("--tls-cert" in line for line in problems)


# --- 7. make test's prerequisites ------------------------------------------------------------


def test_missing_server_packages_stop_at_once_with_the_command(tmp_path: Path) -> None:
    """Without redis-server on PATH and without root, the check names the install command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").symlink_to(shutil.which("id") or "/usr/bin/id")
    as_user = [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534",
               "--clear-groups"]  # fmt: skip
    command = [*(as_user if os.geteuid() == 0 else []), "/bin/bash", "scripts/test-deps.sh"]
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={"PATH": str(bin_dir)},
        timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "apt-get install -y redis-server" in done.stderr
    assert time.monotonic() - started < 5


# --- 8. Redis unreachable at start -----------------------------------------------------------


def test_redis_unreachable_at_start_logs_no_error_tracebacks(
    launcher: Launcher, data_dir: Path
) -> None:
    server = launcher.spawn(
        ["--insecure", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir),
         "--bus", f"redis://127.0.0.1:{free_port()}/0", "--log-format", "json"]
    )  # fmt: skip
    time.sleep(6.5)  # the stale-driver sweep ran every 5 s and failed with a traceback
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0, server.stderr
    records = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
    assert records, server.stderr
    assert not [r for r in records if r["level"] in {"ERROR", "CRITICAL"}], server.stderr
    assert "Traceback" not in server.stderr


# --- 9. simulate: text, JSON, progress on a terminal -----------------------------------------


def test_simulate_prints_text_json_and_progress(dev_server: DevServer) -> None:
    env = dev_server.client_env()
    common = ["simulate", "--drivers", "4", "--rate", "40", "--duration", "1", "--id-prefix"]
    text = cli(*common, "txt-", env=env)
    assert text.returncode == 0, text.stderr
    assert re.fullmatch(r"4 drivers: sent \d+ locations in 1\.0 s .*0 errors\n", text.stdout)
    as_json = cli(*common, "jsn-", "--json", env=env)
    assert json.loads(as_json.stdout.splitlines()[-1])["drivers"] == 4
    # On a terminal: a progress line while it runs (rich), then the text summary.
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "driver_service", *common, "tty-", "--duration", "2"],
        stdout=follower, stderr=subprocess.DEVNULL,
        env={**env, "TERM": "xterm", "COLUMNS": "120"},
    )  # fmt: skip
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    assert proc.wait(20) == 0
    os.close(leader)
    shown = screen.decode(errors="replace")
    assert "simulating" in shown
    assert "errors 0" in shown
    assert "4 drivers: sent" in shown


# --- 10. session answers ride offers ---------------------------------------------------------


@pytest.mark.parametrize("answer", ["accept", "decline"])
def test_session_answers_an_offer(dev_server: DevServer, answer: str) -> None:
    env = dev_server.client_env()
    driver = f"drv-{answer}"
    with (
        subprocess.Popen(
            [sys.executable, "-m", "driver_service", "session", driver],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        ) as session,
    ):  # fmt: skip
        assert session.stdin is not None
        assert session.stdout is not None
        session.stdin.write("loc 52.5 13.4\nping\n")
        session.stdin.flush()
        assert "location" in session.stdout.readline()
        assert "pong" in session.stdout.readline()
        offer = subprocess.Popen(
            [sys.executable, "-m", "driver_service", "offer", driver, "--pickup", "Main St 1",
             "--ttl", "20s", "--wait"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert "ride offer" in session.stdout.readline()
        session.stdin.write(f"{answer}\n")
        session.stdin.flush()
        expected = "ACCEPTED" if answer == "accept" else "DECLINED"
        assert session.stdout.readline().strip().endswith(expected)
        out, err = offer.communicate(timeout=30)
        assert offer.returncode == 0, err
        assert out.split()[-1] == expected
        session.stdin.close()
        assert session.wait(10) == 0


# --- 11. nearby's table, store URL mistakes --------------------------------------------------


def test_nearby_table_is_aligned(dev_server: DevServer) -> None:
    env = dev_server.client_env()
    for driver, lat, lon in (("a", "-33.9", "151.2"), ("a-much-longer-id", "-33.91", "151.21")):
        cli("session", driver, env=env, stdin=f"loc {lat} {lon}\nping\n")
    done = cli("nearby", "-33.9", "151.2", "--radius", "5km", env=env)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["DRIVER", "STATUS", "DISTANCE"]
    assert len(rows) == 2
    # Every column starts (left-aligned) or ends (right-aligned) at the same place.
    for name in ("STATUS", "LAST"):
        at = header.index(name)
        assert all(row[at - 2 : at] == "  " and row[at] != " " for row in rows), done.stdout
    for name in ("LATITUDE", "LONGITUDE"):
        end = header.index(name) + len(name)
        assert all(row[end - 1].isdigit() and row[end] == " " for row in rows), done.stdout


def test_unsupported_store_scheme_lists_every_supported_one(
    launcher: Launcher, data_dir: Path
) -> None:
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", f"127.0.0.1:{free_port()}", "--store", "mysql://db/drivers"]
    )
    assert code == 2
    line = one_line(output)
    for scheme in ("'mysql'", "sqlite:///relative", "sqlite:////absolute", "postgresql://"):
        assert scheme in line


def test_relative_sqlite_url_says_where_the_file_is(tmp_path: Path) -> None:
    done = cli("config", "show", "--insecure", "--store", "sqlite:///rel/x.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sqlite_file"] == str(tmp_path / "rel" / "x.db")
    server = subprocess.Popen(
        [sys.executable, "-m", "driver_service", "serve", "--insecure", "--listen",
         "127.0.0.1:0", "--admin-listen", "", "--store", "sqlite:///rel/x.db"],
        cwd=tmp_path, env=clean_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stderr is not None
    first = server.stderr.readline()
    server.terminate()
    server.communicate(timeout=15)
    assert "relative to the working directory" in first
    assert str(tmp_path / "rel") in first
    assert "sqlite:////" in first


# --- 12. a session's location is visible once the next event is answered ----------------------


async def test_session_location_visible_when_the_next_event_is_answered(
    dev_server: DevServer,
) -> None:
    env = dev_server.client_env()
    async with DriverClient(
        env["DRIVER_SERVICE_TARGET"],
        ca=env["DRIVER_SERVICE_CLIENT_CA"],
        cert=env["DRIVER_SERVICE_CLIENT_CERT"],
        key=env["DRIVER_SERVICE_CLIENT_KEY"],
        token=env["DRIVER_SERVICE_TOKEN"],
    ) as client:
        session = await client.session()
        async with session:
            for i in range(30):
                now = time.time_ns()
                await session.send_location(Location("drv-seen", 10 + i / 100, 20.0, 0, 0, now))
                await session.heartbeat()
                seen = await client.get_driver("drv-seen")
                assert seen.latitude == pytest.approx(10 + i / 100), i
