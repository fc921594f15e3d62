"""mTLS credentials: the server requires client certificates signed by a configured CA, and
picks up replaced certificate files on the next handshake, without a restart.

TLS versions: grpcio's Python API (1.75 to 1.85) has no minimum/maximum TLS version setting
(neither `ssl_server_credentials` nor `dynamic_ssl_server_credentials` take one; grpc/grpc#37305
asks for it, #43045/#43074/#43080 add it upstream, unreleased). gRPC core's defaults apply:
TLS 1.2 minimum, TLS 1.3 maximum, and for TLS 1.2 only ECDHE + AES-GCM cipher suites.
TLS 1.0/1.1 and non-forward-secret suites are refused; TLS 1.2 cannot be turned off here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

#: What gRPC core enforces for this grpcio (no Python setting can raise it).
ENFORCED_MIN_TLS_VERSION = "TLSv1.2"


class TlsConfigError(ValueError):
    """TLS files are missing, unreadable, or do not fit together; the message says which."""


@dataclass(frozen=True, slots=True)
class ServerTlsFiles:
    """The server's certificate chain and key, and the CA bundle client certificates must
    chain to."""

    cert: Path
    key: Path
    client_ca: Path

    def paths(self) -> tuple[Path, Path, Path]:
        return (self.cert, self.key, self.client_ca)


@dataclass(frozen=True, slots=True)
class _Material:
    cert: bytes
    key: bytes
    client_ca: bytes


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsConfigError(f"{what} {path} is empty")
    return data


def load_material(files: ServerTlsFiles) -> _Material:
    """Read and check the files: parseable PEM, and a key that matches the certificate (a
    half-finished rotation must not be served)."""
    cert_pem = _read(files.cert, "server certificate")
    key_pem = _read(files.key, "server key")
    ca_pem = _read(files.client_ca, "client CA")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsConfigError(f"server certificate {files.cert} is not PEM") from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TlsConfigError(f"client CA {files.client_ca} is not PEM") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsConfigError(
            f"server key {files.key} is not an unencrypted PEM private key"
        ) from None
    if chain[0].public_key() != key.public_key():
        raise TlsConfigError(f"server key {files.key} does not match {files.cert}")
    return _Material(cert_pem, key_pem, ca_pem)


def _config(material: _Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.client_ca
    )


class CertificateReloader:
    """The certificate-config fetcher: gRPC calls it before each new handshake; it returns a
    new configuration when any file's mtime/size/inode changed and the new files are
    consistent, else None (keep serving the current certificate)."""

    def __init__(self, files: ServerTlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        self.initial = _config(load_material(files))
        self.reloads = 0

    def _current_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._files.paths():
            try:
                st = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        # Called from gRPC core's threads: never raise, never block long.
        with self._lock:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return None
            try:
                material = load_material(self._files)
            except TlsConfigError as exc:
                # Mid-rotation or broken: keep the old certificate; retry on the next handshake.
                log.warning("TLS files changed but cannot be used yet: %s", exc)
                return None
            self._stamp = stamp
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self._files.cert)
            return _config(material)


def server_credentials(
    files: ServerTlsFiles, *, reload: bool = True
) -> tuple[grpc.ServerCredentials, CertificateReloader | None]:
    """mTLS server credentials: a client certificate is required and verified against
    `files.client_ca`. With `reload`, replaced files are served from the next handshake on."""
    if not reload:
        material = load_material(files)
        creds = grpc.ssl_server_credentials(
            [(material.key, material.cert)],
            root_certificates=material.client_ca,
            require_client_auth=True,
        )
        return creds, None
    reloader = CertificateReloader(files)
    # grpc-stubs types the fetcher without its documented None ("keep the current one").
    fetcher = cast("Callable[[], grpc.ServerCertificateConfiguration]", reloader)
    creds = grpc.dynamic_ssl_server_credentials(
        reloader.initial, fetcher, require_client_authentication=True
    )
    return creds, reloader


def channel_credentials(
    ca: str | Path,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """Client credentials trusting `ca` for the server, presenting `cert`/`key` if given."""
    if (cert is None) != (key is None):
        raise TlsConfigError("a client certificate needs both --tls-cert and --tls-key")
    root = _read(Path(ca), "CA certificate")
    chain = _read(Path(cert), "client certificate") if cert is not None else None
    private = _read(Path(key), "client key") if key is not None else None
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=private, certificate_chain=chain
    )
