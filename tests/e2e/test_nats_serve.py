"""`serve --nats-url` as a real process: start-up mistakes in the NATS settings are one line
naming the setting (exit 2), and a server SIGKILLed while publishing resumes after the
broker's newest event when started again: every event in the stream, once, in log order."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from tests.helpers.grpc_calls import online, replayed_event_ids
from tests.helpers.nats import NatsServer, read_stream
from tests.helpers.server_process import Launcher

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--nats-url", "http://127.0.0.1:4222"], "--nats-url"),
        (["--nats-url", "nats://127.0.0.1:4222", "--nats-stream", "has.dots"], "--nats-stream"),
        (["--nats-url", "nats://x:4222", "--nats-subject-prefix", "a.>"], "--nats-subject-prefix"),
        (["--nats-url", "nats://x:4222", "--nats-timeout", "0"], "--nats-timeout"),
    ],
)
def test_nats_setting_mistakes_exit_2_naming_the_setting(
    launcher: Launcher, data_dir: Path, flags: list[str], named: str
) -> None:
    code, output = launcher.run_to_exit(
        ["--insecure", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *flags]
    )
    lines = output.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, output
    assert named in lines[0]
    assert "Traceback" not in output


async def upload_batches(target: str, prefix: str, batches: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        for b in range(batches):
            await online(channel, [f"{prefix}-{b}-{n}" for n in range(20)])


async def stream_ids(nats: NatsServer) -> list[str]:
    return [m.msg_id for m in await read_stream(nats.url, "DRIVER_EVENTS", "driver_service.>")]


async def test_sigkill_while_publishing_then_restart_publishes_everything_once(
    launcher: Launcher, data_dir: Path, private_nats: NatsServer
) -> None:
    flags = ("--nats-url", private_nats.url, "--stale-after", "86400", "--rate-limit", "0")
    server = launcher.start(data_dir, *flags)
    await upload_batches(server.target, "a", 25)
    server.kill()
    assert server.proc.returncode == -9
    before = await stream_ids(private_nats)

    restarted = launcher.start(data_dir, *flags)
    await upload_batches(restarted.target, "b", 5)
    logged = await replayed_event_ids(restarted.target)
    assert len(logged) == 600
    deadline = time.monotonic() + 60
    while (got := await stream_ids(private_nats)) != logged and time.monotonic() < deadline:
        assert got == logged[: len(got)], "a duplicate or a gap in the stream"
        await asyncio.sleep(0.1)
    assert got == logged
    print(f"\nin the stream at the kill: {len(before)} of 500; after the restart: all 600")
