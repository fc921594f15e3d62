"""What is wrong on the client's side when a connection fails: grpc's own words ("Socket
closed", OpenSSL codes) turned into the setting a user changes."""

from __future__ import annotations

from dataclasses import dataclass

ENV_TARGET = "DRIVER_SERVICE_TARGET"
ENV_CA = "DRIVER_SERVICE_CLIENT_CA"
ENV_CERT = "DRIVER_SERVICE_CLIENT_CERT"
ENV_KEY = "DRIVER_SERVICE_CLIENT_KEY"
ENV_TOKEN = "DRIVER_SERVICE_TOKEN"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True, slots=True)
class Transport:
    """What the client's side of a connection is: TLS or not, with a certificate or not."""

    tls: bool = False
    client_cert: bool = False


#: Markers of grpc's connection errors that say by themselves what is wrong.
_BY_DETAIL = (
    (
        "WRONG_VERSION_NUMBER",
        "TLS client, plaintext server: the server does not speak TLS on this port; "
        f"connect without a CA (unset {ENV_CA} / no --ca) or check the target",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the server's certificate is not signed by the CA the client trusts: give the CA "
        f"that signed it ({ENV_CA}, --ca)",
    ),
    (
        "onnection refused",
        "connection refused: no server listens at the target (is it running? check --target)",
    ),
)


def connection_hint(details: str, transport: Transport | None) -> str | None:
    """What is probably wrong on the client's side when a connection failed, or None.

    grpc reports a refused TLS handshake as "Socket closed" and a TLS client on a plaintext
    port as a raw OpenSSL error; a user needs the setting to change instead."""
    for marker, hint in _BY_DETAIL:
        if marker in details:
            return hint
    closed = "Socket closed" in details or "Connection reset" in details
    if not closed or transport is None:
        return None
    if not transport.tls:
        return (
            "the server closed the connection: it probably requires TLS; give its CA "
            f"({ENV_CA}, --ca) and a client certificate ({ENV_CERT}/{ENV_KEY}, --cert/--key)"
        )
    if not transport.client_cert:
        return (
            "the server refused the TLS connection: it requires a client certificate; give "
            f"one ({ENV_CERT}/{ENV_KEY}, --cert/--key)"
        )
    return (
        "the server refused the TLS connection: the client certificate is probably not "
        "signed by a CA the server trusts (its --tls-client-ca)"
    )
