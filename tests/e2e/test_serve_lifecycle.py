"""`driver-service serve` as an operator runs it: graceful SIGTERM, configuration mistakes
reported one clear line per mistake, exit code 2; one server per data directory; env settings."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from driver_service.client import DriverClient
from driver_service.domain import Location
from driver_service.server.config import SQLITE_FILE_NAME
from tests.helpers.ports import free_port
from tests.helpers.server_process import Launcher, is_serving

pytestmark = pytest.mark.e2e

NANOS = 1_000_000_000
BASE_NS = (time.time_ns() // NANOS - 600) * NANOS


def one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{output}"
    assert "Traceback" not in output
    return lines[0]


async def test_sigterm_exits_zero_and_keeps_data(launcher: Launcher, data_dir: Path) -> None:
    server = launcher.start(data_dir)
    fixes = [Location("life-1", 50.0 + i / 10, 8.0, 1.0, 2.0, BASE_NS + i) for i in range(100)]
    async with DriverClient(server.target) as client:
        report = await client.upload(fixes)
        assert report.persisted_count == 100
        async with await client.session() as session:
            await session.change_status("life-1", "OFFLINE")
            await session.heartbeat()
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    code = server.wait(10)
    took = time.monotonic() - started
    assert code == 0, server.stderr
    assert took < 5, f"SIGTERM took {took:.1f} s"
    assert "Traceback" not in server.stderr

    restarted = launcher.start(data_dir)
    async with DriverClient(restarted.target) as client:
        snap = await client.get_driver("life-1")
    assert (snap.status, snap.latitude, snap.longitude) == ("OFFLINE", 50.0 + 99 / 10, 8.0)


async def test_sigterm_with_an_open_watcher_still_exits_promptly(
    launcher: Launcher, data_dir: Path
) -> None:
    server = launcher.start(data_dir)
    async with DriverClient(server.target) as client:
        await client.upload([Location("life-2", 1.0, 1.0, 0.0, 0.0, BASE_NS)])
        watch = client.watch("life-2")
        first = await anext(watch)
        assert first.driver_id == "life-2"
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(15)
        took = time.monotonic() - started
        await watch.aclose()
    assert code == 0, server.stderr
    # The default grace is 10 s; live streams are ended at once rather than waited out.
    assert took < 5, f"SIGTERM with an open watcher took {took:.1f} s"


def test_serve_without_tls_or_token_key_refuses_with_one_line_per_mistake(
    launcher: Launcher, data_dir: Path
) -> None:
    code, output = launcher.run_to_exit(
        ["--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)]
    )
    assert code == 2
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 2, output
    tls_line, token_line = lines
    assert "--tls-cert" in tls_line
    assert "--insecure" in tls_line
    assert "--token-secret-file" in token_line
    assert not (data_dir / SQLITE_FILE_NAME).exists()


def test_second_server_on_same_data_dir_is_refused(launcher: Launcher, data_dir: Path) -> None:
    first = launcher.start(data_dir)
    second_target = f"127.0.0.1:{free_port()}"
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", second_target, "--data-dir", str(data_dir)]
    )
    assert code != 0
    assert "in use" in output
    assert "Traceback" not in output
    assert not is_serving(second_target)
    assert is_serving(first.target), "the first server was disturbed"


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "127.0.0.1:http", ":50051"])
def test_invalid_listen_exits_2_naming_the_setting(
    launcher: Launcher, data_dir: Path, listen: str
) -> None:
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", listen, "--data-dir", str(data_dir)]
    )
    assert code == 2
    line = one_line(output)
    assert "listen" in line


async def test_listen_and_other_settings_come_from_the_environment(
    launcher: Launcher, tmp_path: Path
) -> None:
    env_dir = tmp_path / "from-env"
    target = f"127.0.0.1:{free_port()}"
    server = launcher.spawn(
        [],
        target,
        env={
            "DRIVER_SERVICE_LISTEN": target,
            "DRIVER_SERVICE_INSECURE": "1",
            "DRIVER_SERVICE_DATA_DIR": str(env_dir),
        },
    ).wait_ready()
    async with DriverClient(server.target) as client:
        report = await client.upload([Location("env-1", 1.0, 1.0, 0.0, 0.0, BASE_NS)])
    assert report.persisted_count == 1
    assert (env_dir / SQLITE_FILE_NAME).exists()


def test_listen_from_environment_is_validated(launcher: Launcher, data_dir: Path) -> None:
    code, output = launcher.run_to_exit(
        ["--insecure", "--data-dir", str(data_dir)], env={"DRIVER_SERVICE_LISTEN": "no-port"}
    )
    assert code == 2
    assert "listen" in one_line(output)
