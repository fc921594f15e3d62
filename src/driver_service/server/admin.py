"""The plaintext admin port: gRPC health for Kubernetes probes and HTTP GET /metrics, on ONE port.

grpc.aio cannot serve HTTP/1.1, so the port is an asyncio server that reads the first line
of each connection: the HTTP/2 preface ("PRI * HTTP/2.0", which gRPC clients and kubelet's
gRPC probe send first) is relayed byte for byte to a grpc.aio server holding only the health
service on an ephemeral loopback port; anything else is answered as HTTP/1.1 (/metrics, 404
elsewhere, 400 for garbage) and closed. One flag (`--admin-listen`), one port to expose and
probe, no thread, and the health servicer is the same object as on the main port, so a
status set there is seen here at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2_grpc

from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.server.config import parse_listen

log = logging.getLogger(__name__)

#: First line of the HTTP/2 connection preface (RFC 9113 §3.4).
HTTP2_PREFACE_LINE: Final = b"PRI * HTTP/2.0\r\n"
#: A request line or header line longer than this is garbage, not a scraper.
MAX_LINE: Final = 8192
MAX_HEADERS: Final = 100
#: A client that has not sent a whole request head by then is dropped.
REQUEST_TIMEOUT_S: Final = 10.0
_RELAY_CHUNK: Final = 64 * 1024


class AdminServer:
    """A started admin endpoint; `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        tcp: asyncio.Server,
        grpc_server: grpc.aio.Server,
        port: int,
        connections: set[asyncio.Task[None]],
    ) -> None:
        self._tcp = tcp
        self._grpc = grpc_server
        self.port = port
        self._connections = connections

    async def stop(self, grace_s: float = 0) -> None:
        """Stop accepting, drop open connections (health watchers see UNAVAILABLE), stop
        the health server. Safe to call twice."""
        self._tcp.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._tcp.wait_closed()
        await self._grpc.stop(grace_s)


async def start_admin(
    listen: str, health_servicer: Any, metrics: ServiceMetrics, *, reuse_port: bool = False
) -> AdminServer:
    """Serve `health_servicer` (a grpc_health.v1 aio HealthServicer) over gRPC and `metrics`
    at GET /metrics, both on `listen` (HOST:PORT; port 0 picks a free one). `reuse_port` lets
    worker processes share the port (each answers for itself)."""
    host, port = parse_listen(listen)
    grpc_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    inner_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    connections: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await _serve_connection(reader, writer, inner_port, metrics)
        except asyncio.CancelledError:
            pass  # stop(): the connection is closed below
        except Exception:  # one bad connection must never stop the port
            log.debug("admin connection failed", exc_info=True)
        finally:
            connections.discard(task)
            writer.close()

    try:
        tcp = await asyncio.start_server(
            on_connection, host, port, limit=MAX_LINE, reuse_port=reuse_port or None
        )
    except BaseException:
        await grpc_server.stop(0)
        raise
    bound = tcp.sockets[0].getsockname()[1]
    return AdminServer(tcp, grpc_server, bound, connections)


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    inner_port: int,
    metrics: ServiceMetrics,
) -> None:
    try:
        first = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT_S)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return
    if first == HTTP2_PREFACE_LINE:
        await _relay(first, reader, writer, inner_port)
        return
    try:
        response = await asyncio.wait_for(_http_response(first, reader, metrics), REQUEST_TIMEOUT_S)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
        response = _response(400, b"bad request\n")
    writer.write(response)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _http_response(
    first: bytes, reader: asyncio.StreamReader, metrics: ServiceMetrics
) -> bytes:
    """Read the rest of an HTTP/1.x request head and build the whole response. Raises
    ValueError on anything that is not a well-formed request line."""
    parts = first.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    method, target, _ = parts
    for _ in range(MAX_HEADERS):  # the headers are not needed, only consumed
        if (await reader.readuntil(b"\n")) in (b"\r\n", b"\n"):
            break
    else:
        raise ValueError("too many header lines")
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n")
    path = target.split(b"?", 1)[0]
    if path != b"/metrics":
        return _response(404, b"not found\n")
    body, content_type = metrics.render()
    return _response(200, body, content_type, head_only=method == b"HEAD")


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode() + extra
    return head + b"\r\n" + (b"" if head_only else body)


async def _relay(
    first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, inner_port: int
) -> None:
    """Pipe an HTTP/2 connection to the health server until either side closes."""
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", inner_port)
    try:
        up_writer.write(first)
        to_inner = asyncio.create_task(_pipe(reader, up_writer))
        to_client = asyncio.create_task(_pipe(up_reader, writer))
        try:
            await asyncio.wait((to_inner, to_client), return_when=asyncio.FIRST_COMPLETED)
        finally:
            to_inner.cancel()
            to_client.cancel()
            await asyncio.gather(to_inner, to_client, return_exceptions=True)
    finally:
        up_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(_RELAY_CHUNK):
            sink.write(data)
            await sink.drain()
