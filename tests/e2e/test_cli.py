"""The client commands as a user runs them: `python -m driver_service …` subprocesses against
a real `serve` subprocess on a free port, with a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from driver_service.cli.upload_command import BadLine, parse_csv, parse_jsonl
from driver_service.client import NotFound, SyncDriverClient
from tests.helpers.ports import free_port

pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 30.0
HEADER = "driver_id,latitude,longitude,speed_mps,heading_degrees,timestamp\n"


def _env() -> dict[str, str]:
    """No DRIVER_SERVICE_* from the developer's shell may change what the CLI does."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DRIVER_SERVICE_")}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server subprocess for this module; killed (and its log shown) at the end."""
    data_dir = tmp_path_factory.mktemp("data")
    log_path = data_dir / "server.log"
    address = f"127.0.0.1:{free_port()}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driver_service",
                "serve",
                "--insecure",
                "--listen",
                address,
                "--data-dir",
                str(data_dir),
                "--admin-listen",
                "127.0.0.1:0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    try:
        _wait_until_serving(proc, address, log_path)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_serving(proc: subprocess.Popen[bytes], address: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        # A new channel each time: a channel that failed to connect waits out its backoff.
        with SyncDriverClient(address, timeout=0.5) as client:
            try:
                client.get_driver("readiness-probe")
            except NotFound:
                return  # a real answer from the service
            except Exception:
                time.sleep(0.05)
    pytest.fail(f"server not serving after {START_TIMEOUT_S} s:\n{log_path.read_text()}")


def cli(target: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver_service", *args, "--target", target],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=_env(),
        check=False,
    )


def get_json(target: str, driver_id: str) -> dict[str, Any]:
    result = cli(target, "get", driver_id, "--json")
    assert result.returncode == 0, result.stderr
    record: dict[str, Any] = json.loads(result.stdout)
    return record


# --- upload --------------------------------------------------------------------------------


def test_upload_csv_then_get_shows_the_newest_fix(target: str, tmp_path: Path) -> None:
    path = tmp_path / "fixes.csv"
    # Out of order, mixed timestamp forms, driver_id given on some rows and blank on others.
    path.write_text(
        HEADER
        + "csv-1,52.5200,13.4050,8.5,90,2024-05-01T12:00:00Z\n"
        + ",52.5300,13.4150,9.0,45,1714565100\n"  # 2024-05-01T12:05:00Z, the newest
        + "csv-1,52.5250,13.4100,7.0,10,2024-05-01T14:02:00+02:00\n"  # 12:02 UTC
    )
    result = cli(target, "upload", "csv-1", "--file", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["received_count"] == 3
    assert report["persisted_count"] == 3
    assert report["session_id"]

    driver = get_json(target, "csv-1")
    assert (driver["latitude"], driver["longitude"]) == (52.53, 13.415)
    assert datetime.fromisoformat(driver["last_seen_at"]) == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)


def test_upload_json_lines_then_get_and_watch_show_the_newest_fix(
    target: str, tmp_path: Path
) -> None:
    path = tmp_path / "fixes.ndjson"
    lines = [
        {"latitude": 48.1, "longitude": 11.5, "speed_mps": 3, "heading_degrees": 0,
         "timestamp": "2024-06-01T08:00:00Z"},
        {},  # replaced by a blank line below: blank lines are allowed
        {"latitude": 48.2, "longitude": 11.6, "speed_mps": 4.5, "heading_degrees": 180.0,
         "timestamp": 1717228860.25},  # 2024-06-01T08:01:00.25Z
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(x) if x else "" for x in lines) + "\n")
    result = cli(target, "upload", "jl-1", "--file", str(path))
    assert result.returncode == 0, result.stderr
    assert "received 2, persisted 2" in result.stdout

    driver = get_json(target, "jl-1")
    assert (driver["latitude"], driver["longitude"]) == (48.2, 11.6)

    watched = cli(target, "watch", "jl-1", "--count", "1", "--json")
    assert watched.returncode == 0, watched.stderr
    (line,) = watched.stdout.splitlines()
    fix = json.loads(line)
    assert (fix["latitude"], fix["longitude"], fix["heading_degrees"]) == (48.2, 11.6, 180.0)
    assert fix["speed_mps"] == pytest.approx(4.5)
    assert datetime.fromisoformat(fix["timestamp"]) == datetime(
        2024, 6, 1, 8, 1, 0, 250_000, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("name", "text", "line", "reason"),
    [
        ("bad-number.csv", HEADER + ",1,2,3,4,1714565100\n,52.5,east,1,1,1714565100\n",
         3, "longitude must be a number"),
        ("bad-json.jsonl", '{"latitude": 1, "longitude": 2, "speed_mps": 0, '
         '"heading_degrees": 0, "timestamp": 1714565100}\n\n{"latitude": 1,\n',
         3, "not valid JSON"),
        ("out-of-range.csv", HEADER + ",91,13,1,1,1714565100\n", 2, "latitude must be"),
        ("naive-time.csv", HEADER + ",52,13,1,1,2024-05-01T12:00:00\n", 2, "no time zone"),
        ("missing-column.csv", "latitude,longitude,timestamp\n1,2,1714565100\n", 1,
         "missing field(s) speed_mps, heading_degrees"),
    ],
)  # fmt: skip
def test_malformed_file_exits_2_naming_the_line_and_sends_nothing(
    target: str, tmp_path: Path, name: str, text: str, line: int, reason: str
) -> None:
    driver_id = "bad-" + name.replace(".", "-")
    path = tmp_path / name
    path.write_text(text)
    result = cli(target, "upload", driver_id, "--file", str(path))
    assert result.returncode == 2
    assert f"line {line}:" in result.stderr
    assert reason in result.stderr
    assert result.stdout == ""
    # The valid lines before the bad one were not sent either.
    missing = cli(target, "get", driver_id)
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr


def test_upload_simulated_route(target: str) -> None:
    result = cli(
        target, "upload", "route-1", "--route", "--points", "25", "--interval", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["received_count"], report["persisted_count"]) == (25, 25)
    driver = get_json(target, "route-1")
    # Near Berlin, ending about now.
    assert abs(driver["latitude"] - 52.52) < 0.3
    assert abs(driver["longitude"] - 13.405) < 0.5
    age = datetime.now(UTC) - datetime.fromisoformat(driver["last_seen_at"])
    assert abs(age.total_seconds()) < 30


def test_file_parsers_agree_on_time_forms_and_count_lines_like_an_editor() -> None:
    now = time.time_ns()
    csv_rows = parse_csv(
        HEADER + "\n,1,2,3,4,2024-05-01T12:00:00.5Z\nx-2,1,2,3,4,1714564800.5\n", "x-1", now
    )
    assert [r.driver_id for r in csv_rows] == ["x-1", "x-2"]
    assert csv_rows[0].recorded_at_ns == csv_rows[1].recorded_at_ns == 1714564800_500_000_000
    jsonl_rows = parse_jsonl(
        '{"latitude": 1, "longitude": 2, "speed_mps": 3, "heading_degrees": 4, '
        '"timestamp": "2024-05-01T12:00:00.5Z"}',
        "x-1",
        now,
    )
    assert jsonl_rows == csv_rows[:1]
    with pytest.raises(BadLine) as raised:
        parse_csv(HEADER + "\n\n,1,2,3,400,1714564800\n", "x-1", now)
    assert raised.value.line == 4
    assert "heading_degrees" in str(raised.value)


# --- session -------------------------------------------------------------------------------


def test_scripted_session_changes_status_and_pings(target: str) -> None:
    result = cli(target, "session", "sess-1", "--json", stdin="status BUSY\nping\nquit\n")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["status_sent", "pong"]
    pong = events[1]
    assert 0 < pong["round_trip_ms"] < 5_000
    server_time = datetime.fromisoformat(pong["server_time"])
    assert abs((datetime.now(UTC) - server_time).total_seconds()) < 30
    assert get_json(target, "sess-1")["status"] == "BUSY"


def test_session_at_end_of_input_closes_cleanly_after_storing_fixes(target: str) -> None:
    # No `quit`: end of input closes the session; the fix is stored before the close returns.
    result = cli(
        target,
        "session",
        "sess-2",
        "--heartbeat-interval",
        "0.05",
        stdin="loc 52.4 13.3 6.5 270\nping\n",
    )
    assert result.returncode == 0, result.stderr
    assert "location 52.400000,13.300000 sent" in result.stdout
    assert "pong" in result.stdout
    driver = get_json(target, "sess-2")
    assert (driver["latitude"], driver["longitude"], driver["status"]) == (52.4, 13.3, "AVAILABLE")


def test_session_rejected_status_is_reported_and_exits_1(target: str) -> None:
    # Nothing is written after the rejected status: a write racing the server's rejection
    # can make grpc.aio report INTERNAL instead (see server_status in session_command).
    result = cli(target, "session", "sess-3", stdin="status SLEEPING\nquit\n")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "SLEEPING" in result.stderr
    assert "Traceback" not in result.stderr


def test_session_typo_is_reported_and_the_session_goes_on(target: str) -> None:
    result = cli(target, "session", "sess-4", stdin="stauts BUSY\nloc 1 north\nstatus OFFLINE\n")
    assert result.returncode == 2
    assert "unknown command 'stauts'" in result.stderr
    assert "usage: loc" in result.stderr
    assert get_json(target, "sess-4")["status"] == "OFFLINE"


# --- simulate ------------------------------------------------------------------------------


def test_simulate_sends_at_the_requested_total_rate(target: str) -> None:
    started = time.monotonic()
    result = cli(
        target,
        "simulate",
        "--drivers",
        "20",
        "--rate",
        "100",
        "--duration",
        "2",
        "--id-prefix",
        "rate-",
        "--seed",
        "1",
        "--json",
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["errors"] == 0
    assert 190 <= summary["sent"] <= 210
    assert summary["rate_per_s"] == pytest.approx(100, rel=0.1)
    assert summary["elapsed_s"] == pytest.approx(2.0, abs=0.2)
    assert took < 10
    for driver_id in ("rate-1", "rate-20"):
        driver = get_json(target, driver_id)
        assert driver["status"] in {"AVAILABLE", "BUSY"}
        assert abs(driver["latitude"] - 52.52) < 0.2


def test_simulate_hundreds_of_drivers_stops_cleanly_on_ctrl_c(target: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "driver_service", "simulate", "--drivers", "300",
            "--rate", "600", "--id-prefix", "int-", "--target", target, "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )  # fmt: skip
    try:
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["errors"] == 0
    assert summary["drivers"] == 300
    # About 1.5 s of sending after start-up; every driver ticks every 0.5 s.
    assert summary["sent"] > 300
    assert summary["rate_per_s"] > 400
    assert "Traceback" not in stderr
    get_json(target, "int-1")
    get_json(target, "int-300")


# --- errors --------------------------------------------------------------------------------


def test_get_unknown_driver_exits_1_with_not_found(target: str) -> None:
    result = cli(target, "get", "nobody-here")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr
    assert result.stdout == ""
