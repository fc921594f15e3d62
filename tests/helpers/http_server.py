"""A real server with its HTTP front door: mTLS gRPC and HTTPS on 127.0.0.1 port 0, bearer
tokens from a secret, built as production builds it (`start_server`), and clients for both."""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from driver_service.observability.metrics.catalogue import ServiceMetrics
from driver_service.security import TokenIssuer, channel_credentials
from driver_service.security.devcerts import DevCertPaths, create_dev_certs
from driver_service.security.tokens import (
    SCOPE_DISPATCH,
    SCOPE_EVENTS,
    SCOPE_FORGET,
    SCOPE_HISTORY,
    SCOPE_READ,
    SCOPE_WRITE,
    SCOPE_ZONES,
)
from driver_service.server.composition import build_services
from driver_service.server.config import ServerSettings
from driver_service.server.running import RunningServer, start_server

SECRET = b"http-test-secret-of-at-least-32-bytes!"
ALL_SCOPES = (
    SCOPE_READ,
    SCOPE_WRITE,
    SCOPE_DISPATCH,
    SCOPE_ZONES,
    SCOPE_EVENTS,
    SCOPE_HISTORY,
    SCOPE_FORGET,
)


@dataclass
class HttpFixture:
    running: RunningServer
    settings: ServerSettings
    certs: DevCertPaths
    issuer: TokenIssuer
    base_url: str
    metrics: ServiceMetrics
    stopped: bool = False

    def token(self, scopes: Iterable[str] = ALL_SCOPES) -> str:
        return self.issuer.issue_service(scopes)

    def driver_token(self, driver_id: str) -> str:
        return self.issuer.issue_driver(driver_id)

    def headers(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"authorization": f"Bearer {token}"}

    def client(self, token: str | None = None, **options: Any) -> httpx.AsyncClient:
        """An HTTPS client that trusts the development CA (no client certificate)."""
        return httpx.AsyncClient(
            **{"base_url": self.base_url, **options},
            verify=ssl.create_default_context(cafile=str(self.certs.ca_cert)),
            headers=self.headers(token),
            timeout=10,
        )

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.running.port}",
            channel_credentials(self.certs.ca_cert, self.certs.client_cert, self.certs.client_key),
        )

    def metadata(self, token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    async def stop(self, grace_s: float = 0) -> None:
        if not self.stopped:
            self.stopped = True
            await self.running.stop(grace_s)


@asynccontextmanager
async def http_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[HttpFixture]:
    """The server with `--http-listen 127.0.0.1:0`, TLS from fresh development certificates."""
    certs = create_dev_certs(tmp_path / "certs")
    secret = tmp_path / "token.secret"
    secret.write_bytes(SECRET)
    settings = ServerSettings(
        listen="127.0.0.1:0",
        admin_listen="",
        http_listen="127.0.0.1:0",
        data_dir=tmp_path,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca_cert,
        token_secret_file=secret,
        access_log="off",
    )
    settings = dataclasses.replace(settings, **overrides)
    metrics = ServiceMetrics()
    services = await build_services(settings, metrics)
    running = await start_server(settings, services, metrics)
    assert running.http is not None
    fixture = HttpFixture(
        running,
        settings,
        certs,
        TokenIssuer.from_secret(SECRET),
        f"https://127.0.0.1:{running.http.port}",
        metrics,
    )
    try:
        yield fixture
    finally:
        await fixture.stop(0)


async def sse_frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each SSE block as {"id", "event", "data"} or {"comment": text}."""
    block: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if block:
                yield block
            block = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            key, _, value = line.partition(": ")
            block[key] = json.loads(value) if key == "data" else value
