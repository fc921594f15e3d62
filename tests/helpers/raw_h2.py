"""A bare HTTP/2 client for tests that must see or send what grpc's own client hides or
refuses to send: GOAWAY frames and pings, gRPC message prefixes a real client never builds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events


class RawH2:
    """A bare HTTP/2 client connection: it sends only what a test tells it to (h2 queues a
    PING ACK for every ping received; `flush()` sends them, a dead peer never does)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.events: list[h2.events.Event] = []
        self.eof_at: float | None = None

    @classmethod
    async def connect(cls, port: int) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        raw.conn.initiate_connection()
        raw.flush()
        # Server SETTINGS arrive first; answering them (the ACK) completes the handshake.
        await raw.wait_for(lambda: raw.has(h2.events.RemoteSettingsChanged), 5)
        raw.flush()
        return raw

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def has(self, kind: type[h2.events.Event]) -> bool:
        return any(isinstance(e, kind) for e in self.events)

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return event
        return None

    async def read_for(self, seconds: float) -> None:
        """Collect events for `seconds` (or until EOF), answering nothing."""
        deadline = time.monotonic() + seconds
        while self.eof_at is None and (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return
            except ConnectionError:
                data = b""
            if not data:
                self.eof_at = time.monotonic()
                return
            self.events.extend(self.conn.receive_data(data))

    async def wait_for(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done() and self.eof_at is None and time.monotonic() < deadline:
            await self.read_for(min(0.05, deadline - time.monotonic()))

    def ping(self) -> None:
        self.conn.ping(b"12345678")
        self.flush()

    def close(self) -> None:
        self.writer.close()

    def start_grpc_call(self, path: str, *, extra_headers: tuple[tuple[str, str], ...] = ()) -> int:
        """Open a stream with the request headers of a gRPC call on `path`; its id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra_headers,
        ]
        self.conn.send_headers(stream_id, headers)
        self.flush()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        self.conn.send_data(stream_id, data, end_stream=end_stream)
        self.flush()

    def grpc_status(self, stream_id: int) -> int | None:
        """The stream's `grpc-status` (trailers, or a trailers-only response); -1 if the
        server reset the stream without one; None while neither has arrived."""
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                for name, value in event.headers or ():
                    if bytes(name) == b"grpc-status":
                        return int(value)
            if isinstance(event, h2.events.StreamReset):
                return -1
        return None
