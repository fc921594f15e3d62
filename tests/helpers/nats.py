"""A private NATS server with JetStream for tests: /usr/sbin/nats-server (Debian's
`nats-server`) on a free port, its store in a temp dir, so a test can kill it, start it again
on the same store, or pause it (SIGSTOP) without touching anyone else's broker."""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.private_server import PrivateServer

NATS_SERVER = Path("/usr/sbin/nats-server")
NATS_MISSING = "nats-server not found: apt-get install nats-server"


def _binary() -> str:
    return shutil.which("nats-server") or str(NATS_SERVER)


def _answers_info(port: int) -> bool:
    """The server greets every client with an INFO line: ready once it does. JetStream
    recovers its store before the listener opens, so a greeting means the store is back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(5).startswith(b"INFO")
    except OSError:
        return False


@dataclass
class NatsServer(PrivateServer):
    """One `nats-server -js` whose port and store directory survive restarts (a kill
    loses only what JetStream had not acknowledged)."""

    name = "nats"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.root / "jetstream"

    @classmethod
    def create(cls) -> NatsServer:
        if not Path(_binary()).is_file():
            pytest.fail(NATS_MISSING, pytrace=False)
        return cls(Path(tempfile.mkdtemp(prefix="nats-")))

    def command(self) -> list[str]:
        return [
            _binary(),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]

    def answers(self) -> bool:
        return _answers_info(self.port)


@dataclass(frozen=True)
class Published:
    subject: str
    msg_id: str
    body: bytes


async def read_stream(url: str, stream: str, subject: str) -> list[Published]:
    """Every message the stream holds on `subject` (wildcards allowed), oldest first, read
    by a JetStream pull consumer of its own (ephemeral: nothing is left behind)."""
    import nats

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=5)
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(subject, stream=stream)
        got: list[Published] = []
        while len(got) < total:
            for msg in await sub.fetch(min(500, total - len(got)), timeout=5):
                await msg.ack()
                got.append(
                    Published(msg.subject, (msg.headers or {}).get("Nats-Msg-Id", ""), msg.data)
                )
        await sub.unsubscribe()
        return got
    finally:
        await nc.close()
