"""Development certificates: a private CA, a server certificate and client certificates.

For local runs and tests only; production mounts certificates from a real CA. Keys are
ECDSA P-256 (fast to make, supported by every gRPC TLS stack) and written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_CLIENT_NAME = "dev-client"
DEFAULT_DAYS = 365
KEY_MODE = 0o600


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class DevCertPaths:
    """The files `create_dev_certs` wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "driver-service development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(
    common_name: str = "driver-service dev CA",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> CertificateAuthority:
    key = new_key()
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=DEFAULT_DAYS * 2)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_cert(
    ca: CertificateAuthority,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    client: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by `ca`: a server one if `server_names` is given (they become
    SANs), a client one if `client`. Validity can be set to make expired certificates in tests."""
    if not server_names and not client:
        raise ValueError("a certificate needs server names, client use, or both")
    key = new_key()
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=DEFAULT_DAYS)
    usages = []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server_names:
        unique = list(dict.fromkeys(server_names))
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in unique]), critical=False
        )
    return builder.sign(ca.key, hashes.SHA256()), key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename) so a server reloading it never sees half a
    file, creating it with `mode` from the start so a key is never briefly world-readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    tmp.replace(path)


def write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Key first, then certificate: a reloader keyed on the certificate sees a matching pair."""
    write_file(key_path, key_pem(key), KEY_MODE)
    write_file(cert_path, cert_pem(cert))


def create_dev_certs(
    directory: str | Path,
    server_names: Iterable[str] = (),
    *,
    client_name: str = DEFAULT_CLIENT_NAME,
    extra_clients: Iterable[str] = (),
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
) -> DevCertPaths:
    """Write ca.crt/ca.key, server.crt/key (SANs localhost, 127.0.0.1, ::1 + `server_names`),
    client.crt/key (CN `client_name`) and `<name>.crt/key` for each extra client."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = DevCertPaths(
        directory=root,
        ca_cert=root / "ca.crt",
        ca_key=root / "ca.key",
        server_cert=root / "server.crt",
        server_key=root / "server.key",
        client_cert=root / "client.crt",
        client_key=root / "client.key",
    )
    if not overwrite and paths.ca_cert.exists():
        raise FileExistsError(f"{paths.ca_cert} exists; pass overwrite=True to replace it")
    start = _now() - dt.timedelta(minutes=5)
    ca = make_ca(not_before=start, not_after=start + dt.timedelta(days=days + 1))
    write_pair(paths.ca_cert, paths.ca_key, ca.cert, ca.key)
    end = start + dt.timedelta(days=days)
    given = list(server_names)
    names = [*DEFAULT_SERVER_NAMES, *given]
    common_name = given[0] if given else DEFAULT_SERVER_NAMES[0]
    server, server_key = issue_cert(
        ca, common_name, server_names=names, not_before=start, not_after=end
    )
    write_pair(paths.server_cert, paths.server_key, server, server_key)
    client, client_key = issue_cert(ca, client_name, client=True, not_before=start, not_after=end)
    write_pair(paths.client_cert, paths.client_key, client, client_key)
    for name in extra_clients:
        cert, key = issue_cert(ca, name, client=True, not_before=start, not_after=end)
        write_pair(root / f"{name}.crt", root / f"{name}.key", cert, key)
    return paths
