"""`driver-service serve --http-listen` as an operator runs it: the HTTP front door serves in
a single process on SQLite, on PostgreSQL + Redis, and in every one of `--workers 2`; and its
start-up mistakes are one line naming the setting, exit 2 (never N workers failing alike)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driver_service.security.devcerts import create_dev_certs
from tests.helpers.http_server import sse_frames
from tests.helpers.ports import free_port
from tests.helpers.postgres import PostgresServer, create_database
from tests.helpers.redis import RedisServer
from tests.helpers.server_process import Launcher

pytestmark = pytest.mark.e2e


def one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{output}"
    assert "Traceback" not in output
    return lines[0]


async def _http_ready(base: str, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/openapi.json")).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"{base} not answering"
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", ["sqlite", "postgres+redis", "postgres+redis, 2 workers"])
async def test_the_http_door_serves_in_each_worker_mode(
    launcher: Launcher,
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    mode: str,
) -> None:
    target, http_port = f"127.0.0.1:{free_port()}", free_port()
    args = ["--insecure", "--listen", target, "--http-listen", f"127.0.0.1:{http_port}",
            "--data-dir", str(tmp_path), "--log-format", "json"]  # fmt: skip
    workers = 2 if "workers" in mode else 1
    if mode != "sqlite":
        postgres_server.start()
        redis_server.start()
        args += ["--store", await create_database(postgres_server), "--bus", redis_server.url]
    if workers > 1:
        args += ["--workers", str(workers)]
    server = launcher.spawn(args, target).wait_ready()
    base = f"http://127.0.0.1:{http_port}"
    await _http_ready(base)
    seen_workers: set[int] = set()
    # A fresh connection per request: the kernel spreads them over the workers.
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        r = await http.post(
            "/v1/drivers/drv:http:uploadLocations",
            json={"locations": [{"latitude": 52.5, "longitude": 13.4}]},
        )
        assert (r.status_code, r.json()["persistedCount"]) == (200, 1), r.text
    for i in range(200):
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            r = await http.get("/v1/drivers/drv:http", headers={"x-request-id": f"probe-{i}"})
            assert (r.status_code, r.json()["driverId"]) == (200, "drv:http"), r.text
        seen_workers = {r.get("worker", -1) for r in _access_log(server.stderr)}
        if len(seen_workers) == workers and i >= 3:
            break
    assert seen_workers == ({0, 1} if workers > 1 else {-1}), seen_workers

    await _every_fleet_stream_sees_a_move(base, FLEET_STREAMS)
    streamed: list[int] = []
    deadline = time.monotonic() + 10
    while len(streamed) < FLEET_STREAMS:  # logged as each stream ends
        assert time.monotonic() < deadline, f"fleet streams logged: {streamed}"
        await asyncio.sleep(0.1)
        streamed = [r.get("worker", -1) for r in _access_log(server.stderr)
                    if r["route"] == "fleet_stream"]  # fmt: skip
    if workers > 1:  # 16 connections all on one of 2 workers: 1 in 30,000
        assert set(streamed) == {0, 1}, streamed


#: Fleet streams opened at once in the worker-mode test, each on a connection of its own.
FLEET_STREAMS = 16


def _access_log(output: str) -> list[dict[str, Any]]:
    records = []
    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("logger") == "driver_service.http.access":
                records.append(record)
    return records


async def _every_fleet_stream_sees_a_move(base: str, count: int) -> None:
    """Fleet streams on separate connections (so on every worker, whichever took them) all
    get a move uploaded on yet another connection: through Redis between workers."""
    clients = [httpx.AsyncClient(base_url=base, timeout=10) for _ in range(count)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            streams = []
            for client in clients:
                response = await stack.enter_async_context(client.stream("GET", "/v1/fleet:stream"))
                assert response.status_code == 200
                frames = sse_frames(response)
                while (await anext(frames)).get("event") != "ready":
                    pass
                streams.append(frames)
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                r = await http.post(
                    "/v1/drivers/drv:moved:uploadLocations",
                    json={"locations": [{"latitude": 48.1, "longitude": 11.6}]},
                )
                assert r.status_code == 200, r.text
            for frames in streams:
                async with asyncio.timeout(10):
                    while True:
                        frame = await anext(frames)
                        moved = frame.get("data", {}).get("locations", [])
                        if any(x["driverId"] == "drv:moved" for x in moved):
                            break
    finally:
        for client in clients:
            await client.aclose()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another server listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        yield other.getsockname()[1]


def _mistakes(tmp_path: Path, taken: int) -> dict[str, tuple[list[str], str]]:
    """name: (flags after --data-dir, the setting its one line must begin with)."""
    certs = create_dev_certs(tmp_path / "certs")
    secret = tmp_path / "token.secret"
    secret.write_bytes(b"e2e-secret-of-at-least-32-bytes-long!!")
    tls = ["--tls-key", str(certs.server_key), "--tls-client-ca", str(certs.ca_cert),
           "--token-secret-file", str(secret), "--listen", f"127.0.0.1:{free_port()}"]  # fmt: skip
    insecure = ["--insecure", "--listen", f"127.0.0.1:{free_port()}"]
    scale = ["--store", "postgresql://127.0.0.1:1/x", "--bus", "redis://127.0.0.1:1",
             "--workers", "2"]  # fmt: skip
    return {
        "bad address": ([*insecure, "--http-listen", "nowhere"], "--http-listen"),
        "port out of range": ([*insecure, "--http-listen", "127.0.0.1:70000"], "--http-listen"),
        "port in use": ([*insecure, "--http-listen", f"127.0.0.1:{taken}"], "--http-listen"),
        "port in use, workers": (
            [*insecure, *scale, "--http-listen", f"127.0.0.1:{taken}"],
            "--http-listen",
        ),
        "port 0, workers": ([*insecure, *scale, "--http-listen", "127.0.0.1:0"], "--workers"),
        "missing certificate": (
            [*tls, "--tls-cert", str(tmp_path / "missing.crt"), "--http-listen", "127.0.0.1:0"],
            "--tls-cert",
        ),
        "missing certificate, workers": (
            [
                *tls,
                *scale,
                "--tls-cert",
                str(tmp_path / "missing.crt"),
                "--http-listen",
                f"127.0.0.1:{free_port()}",
            ],
            "--tls-cert",
        ),
        "allowlist not an origin": (
            [*insecure, "--http-listen", "127.0.0.1:0", "--http-cors-origin", "ops.example"],
            "--http-cors-origin",
        ),
        "allowlist with a path": (
            [
                *insecure,
                "--http-listen",
                "127.0.0.1:0",
                "--http-cors-origin",
                "https://ops.example/map",
            ],
            "--http-cors-origin",
        ),
        "allowlist wildcard": (
            [*insecure, "--http-listen", "127.0.0.1:0", "--http-cors-origin", "*"],
            "--http-cors-origin",
        ),
        "tiles not a template": (
            [*insecure, "--http-listen", "127.0.0.1:0", "--map-tiles", "tiles.example"],
            "--map-tiles",
        ),
    }


MISTAKES = ["bad address", "port out of range", "port in use", "port in use, workers",
            "port 0, workers", "missing certificate", "missing certificate, workers",
            "allowlist not an origin", "allowlist with a path", "allowlist wildcard",
            "tiles not a template"]  # fmt: skip


@pytest.mark.parametrize("mistake", MISTAKES)
def test_http_start_up_mistakes_are_one_line_naming_the_setting_exit_2(
    launcher: Launcher, tmp_path: Path, taken_port: int, mistake: str
) -> None:
    data_dir = tmp_path / "data"
    cases = _mistakes(tmp_path, taken_port)
    assert sorted(cases) == sorted(MISTAKES)
    flags, setting = cases[mistake]
    code, output = launcher.run_to_exit(["--data-dir", str(data_dir), *flags])
    line = one_line(output)
    assert code == 2, output
    assert line.startswith(f"driver-service serve: {setting}"), line
    assert not list(data_dir.glob("*.db")), "nothing is opened before the mistake is reported"
