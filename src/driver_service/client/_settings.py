"""Where the server is and how to reach it (target, CA, client certificate, token): the same
settings, under the same `DRIVER_SERVICE_*` names, for the library and the CLI, so the
`export` line `make run` prints works for both."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from driver_service.client._hints import ENV_CA, ENV_CERT, ENV_KEY, ENV_TARGET, ENV_TOKEN, Transport
from driver_service.client.errors import ClientConfigError

#: Where `make run` serves, and the CLI's default.
DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Target, TLS material and bearer token of a client. Without `ca` the channel is
    plaintext (a server started with `--insecure`); with it TLS, presenting `cert`/`key` if
    given (mTLS, as `make run` requires).

    >>> settings = ClientSettings.from_env()          # what the CLI reads
    >>> client = DriverClient.from_settings(settings)  # or DriverClient.from_env()
    """

    target: str = DEFAULT_TARGET
    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    token: str | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: str | Path | None
    ) -> ClientSettings:
        """Settings from DRIVER_SERVICE_TARGET, _CLIENT_CA, _CLIENT_CERT, _CLIENT_KEY and
        _TOKEN (unset: defaults); keyword arguments that are not None win."""
        env = os.environ if environ is None else environ
        settings = cls(
            target=env.get(ENV_TARGET) or DEFAULT_TARGET,
            ca=env.get(ENV_CA) or None,
            cert=env.get(ENV_CERT) or None,
            key=env.get(ENV_KEY) or None,
            token=env.get(ENV_TOKEN) or None,
        )
        given = {name: value for name, value in overrides.items() if value is not None}
        return replace(settings, **given)  # type: ignore[arg-type]

    @property
    def transport(self) -> Transport:
        return Transport(tls=bool(self.ca), client_cert=bool(self.cert))

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials when a CA is set, else None (plaintext). Files are read now, so
        a missing one is reported before any call, naming the setting."""
        if (self.cert is None) != (self.key is None):
            raise ClientConfigError(
                f"a client certificate needs both cert ({ENV_CERT}, --cert) "
                f"and key ({ENV_KEY}, --key)"
            )
        if not self.ca:
            if self.cert:
                raise ClientConfigError(
                    f"a client certificate is only used over TLS: give the server's CA too "
                    f"(ca, {ENV_CA}, --ca)"
                )
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate", f"ca, {ENV_CA}, --ca"),
            private_key=_read(self.key, "client key", f"key, {ENV_KEY}, --key"),
            certificate_chain=_read(self.cert, "client certificate", f"cert, {ENV_CERT}, --cert"),
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: str | Path | None, what: str, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ClientConfigError(f"{what} {path} ({setting}): {exc.strerror or exc}") from None
    if not data.strip():
        raise ClientConfigError(f"{what} {path} ({setting}) is empty")
    return data
