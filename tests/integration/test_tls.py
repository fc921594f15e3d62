"""mTLS on a real socket: who cannot connect, which TLS versions are accepted, and
certificate rotation under a running server."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driver_service.security import ServerTlsFiles, channel_credentials, server_credentials
from driver_service.security.devcerts import (
    CertificateAuthority,
    cert_pem,
    issue_cert,
    make_ca,
    write_file,
    write_pair,
)


@dataclass
class Pki:
    root: Path
    ca: CertificateAuthority

    def path(self, name: str) -> Path:
        return self.root / name

    def client(
        self, name: str, ca: CertificateAuthority | None = None, **validity: dt.datetime
    ) -> tuple[Path, Path]:
        cert, key = issue_cert(ca or self.ca, name, client=True, **validity)
        write_pair(self.path(f"{name}.crt"), self.path(f"{name}.key"), cert, key)
        return self.path(f"{name}.crt"), self.path(f"{name}.key")

    def server(self, common_name: str) -> None:
        cert, key = issue_cert(self.ca, common_name, server_names=["localhost", "127.0.0.1"])
        write_pair(self.path("server.crt"), self.path("server.key"), cert, key)


@dataclass
class Running:
    port: int
    pki: Pki


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    pki = Pki(tmp_path, make_ca())
    write_file(pki.path("ca.crt"), cert_pem(pki.ca.cert))
    pki.server("first")
    pki.client("good")
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    creds, _ = server_credentials(
        ServerTlsFiles(pki.path("server.crt"), pki.path("server.key"), pki.path("ca.crt"))
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield Running(port, pki)
    finally:
        await server.stop(0)


async def check(running: Running, cert: Path | None, key: Path | None) -> grpc.StatusCode:
    creds = channel_credentials(running.pki.path("ca.crt"), cert, key)
    async with grpc.aio.secure_channel(f"localhost:{running.port}", creds) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_client_with_a_cert_from_the_ca_gets_in(running: Running) -> None:
    assert await check(running, *running.pki.client("another")) == grpc.StatusCode.OK


async def test_client_without_cert_is_refused(running: Running) -> None:
    assert await check(running, None, None) == grpc.StatusCode.UNAVAILABLE


async def test_client_cert_from_another_ca_is_refused(running: Running) -> None:
    other = make_ca("someone else's CA")
    assert (
        await check(running, *running.pki.client("stranger", ca=other))
        == grpc.StatusCode.UNAVAILABLE
    )


async def test_expired_client_cert_is_refused(running: Running) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = running.pki.client(
        "old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
    )
    assert await check(running, *expired) == grpc.StatusCode.UNAVAILABLE


async def peer_common_name(running: Running) -> str:
    """Handshake with Python's ssl (client cert, ALPN h2) and read the server's CN."""
    context = ssl.create_default_context(cafile=str(running.pki.path("ca.crt")))
    context.load_cert_chain(running.pki.path("good.crt"), running.pki.path("good.key"))
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=context, server_hostname="localhost"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def test_rotated_server_cert_is_served_to_new_connections(running: Running) -> None:
    assert await peer_common_name(running) == "first"
    running.pki.server("second")  # replaces server.key then server.crt, atomically each
    assert await peer_common_name(running) == "second"
    assert (
        await check(running, running.pki.path("good.crt"), running.pki.path("good.key"))
        == grpc.StatusCode.OK
    )


async def test_half_rotated_files_keep_the_old_certificate(running: Running) -> None:
    # A new key whose certificate has not arrived yet must not break handshakes.
    _, key = issue_cert(running.pki.ca, "pending", server_names=["localhost"])
    from driver_service.security.devcerts import KEY_MODE, key_pem

    write_file(running.pki.path("server.key"), key_pem(key), KEY_MODE)
    assert await peer_common_name(running) == "first"


async def s_client(running: Running, *flags: str) -> tuple[int, str]:
    pki = running.pki
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        *flags,
        "-connect",
        f"127.0.0.1:{running.port}",
        "-CAfile",
        str(pki.path("ca.crt")),
        "-cert",
        str(pki.path("good.crt")),
        "-key",
        str(pki.path("good.key")),
        "-alpn",
        "h2",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_tls_versions_enforced(running: Running) -> None:
    """What grpcio 1.85 enforces: TLS 1.3 and 1.2 (AEAD suites only); 1.1 and CBC refused.
    TLS 1.2 cannot be refused from Python (no setting); see security/tls.py."""
    _, tls13 = await s_client(running, "-tls1_3")
    assert "New, TLSv1.3, Cipher is TLS_AES_" in tls13
    _, tls12 = await s_client(running, "-tls1_2")
    assert "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES" in tls12
    assert "-GCM-" in tls12
    _, tls11 = await s_client(running, "-tls1_1")
    assert "Cipher is (NONE)" in tls11
    _, cbc = await s_client(running, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256")
    assert "Cipher is (NONE)" in cbc
