"""uvicorn in the gRPC server's event loop: one process, one loop, two front doors.

We bind the socket ourselves (so `--http-listen` mistakes are the start-up one-liners, and
workers share the port with SO_REUSEPORT as they share the gRPC one) and drive uvicorn's
startup / main loop / shutdown directly rather than `Server.serve()`, which would take over
SIGTERM and SIGINT from `serve` (server/running.py owns them and stops both doors).

TLS: the gRPC server's certificate and key, re-read when the files change (checked at each
new connection's handshake, as gRPC does), TLS 1.2 minimum. Browsers carry no client
certificate, so the HTTP door authenticates callers by bearer token only (docs/http.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from driver_service.http.app import FrontDoor, build_app

log = logging.getLogger(__name__)

#: Bytes a connection's transport may hold before the writer waits (the TLS transport's own
#: default is 512 KiB, some 3,000 location frames: a slow SSE reader would get that many
#: stale locations before the newest, whatever the per-client buffer of 16 drops).
WRITE_BUFFER_HIGH = 16 * 1024


class _H11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a small write buffer, so that a reader that does
    not read pushes back on its stream at once (sse.DropOldest then keeps only the newest)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        super().connection_made(transport)


class ReloadingTls:
    """An SSLContext with the server certificate, swapped for a fresh one at a handshake
    after the certificate or key file changed (a rotation needs no restart)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = cert, key
        self._stamp = self._files_stamp()
        self.context = self._load(sni=True)
        self._current = self.context

    def _files_stamp(self) -> tuple[float, float]:
        return (os.stat(self._cert).st_mtime, os.stat(self._key).st_mtime)

    def _load(self, *, sni: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._cert, self._key)
        ctx.set_alpn_protocols(["http/1.1"])
        if sni:
            ctx.sni_callback = self._on_handshake
        return ctx

    def _on_handshake(self, conn: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        try:
            stamp = self._files_stamp()
            if stamp != self._stamp:
                self._current = self._load(sni=False)
                self._stamp = stamp
                log.info("http: reloaded the server certificate")
        except (OSError, ssl.SSLError) as exc:  # a half-written rotation: keep the old one
            log.warning("http: server certificate not reloaded: %s", exc)
        if self._current is not self.context:
            conn.context = self._current


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted connections inherit it: without, a response written in two pieces (head,
        # then body) waits ~40 ms for the client's delayed ACK (Nagle's algorithm).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class HttpServer:
    door: FrontDoor
    server: uvicorn.Server
    port: int
    _loop_task: asyncio.Task[None]

    async def stop(self, grace_s: float) -> None:
        """End every SSE stream, stop accepting, let requests in flight finish within
        `grace_s`, then cancel what is left (as grpc.aio's `stop(grace)`)."""
        self.door.stopping.set()
        # uvicorn's own type says int; asyncio.wait_for takes any number of seconds.
        self.server.config.timeout_graceful_shutdown = grace_s if grace_s > 0 else None  # type: ignore[assignment]
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        if grace_s <= 0:
            self.server.force_exit = True
            for connection in list(self.server.server_state.connections):
                connection.shutdown()
            for task in list(self.server.server_state.tasks):
                task.cancel()
        shutdown = asyncio.ensure_future(self.server.shutdown())
        # uvicorn closes each connection once its answer is complete, and waits for every
        # one to be gone. A TLS close waits for the client's close_notify (asyncio allows it
        # 30 s), which a client that keeps its idle connection never sends: every stop with
        # a browser attached would take the whole grace. A connection closing with nothing
        # left to write has delivered its answer in full: abort it.
        while not shutdown.done():
            for connection in list(self.server.server_state.connections):
                transport = connection.transport
                if transport.is_closing() and not transport.get_write_buffer_size():
                    transport.abort()
            await asyncio.wait({shutdown}, timeout=0.05)
        await shutdown


async def start_http(
    door: FrontDoor,
    host: str,
    port: int,
    *,
    tls: tuple[Path, Path] | None,
    reuse_port: bool = False,
) -> HttpServer:
    """Serve `door` on host:port (HTTPS with `tls` = (certificate, key))."""
    app: ASGIApp = build_app(door)
    reloading = None if tls is None else ReloadingTls(*tls)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=True,
        http=_H11,
        ws="none",
        timeout_keep_alive=30,
        ssl_context_factory=None if reloading is None else (lambda _c, _d: reloading.context),
        ssl_certfile=None if tls is None else str(tls[0]),
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    sock = bind(host, port, reuse_port=reuse_port)
    bound = sock.getsockname()[1]
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    task = asyncio.get_running_loop().create_task(server.main_loop(), name="http-server")
    return HttpServer(door, server, bound, task)
