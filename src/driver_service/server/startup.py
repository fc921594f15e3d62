"""The one place that turns a failure while starting `serve` into one line naming the setting
to change: a new user should read what to fix, not a traceback (exit code 2, as for any
invalid setting)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from driver_service.security.tls import ServerTlsFiles, TlsConfigError, load_material
from driver_service.server.config import ConfigError, ServerSettings, mask_url, parse_listen

#: The exit code of every start-up mistake (configuration, bind, TLS material, store, bus).
EXIT_STARTUP = 2


class StartupError(ConfigError):
    """Start-up failed for a reason the operator fixes in a setting; the message is one line
    that begins with the setting (`--listen: …`)."""


def store_setting(settings: ServerSettings) -> tuple[str, str]:
    """The flag that chooses the store and its value as shown (password masked)."""
    if settings.store is not None:
        return "--store", mask_url(settings.store)
    return "--data-dir", str(settings.data_dir)


def preflight(settings: ServerSettings, *, shared_ports: bool = False) -> None:
    """Checks that are cheap and fail before anything is opened, so a taken port or a bad
    certificate is the only line printed (no store or index log lines before it).
    `shared_ports`: workers share their ports on purpose; do not probe them."""
    if not shared_ports:
        for setting in ("--listen", "--admin-listen", "--http-listen"):
            value = getattr(settings, setting.removeprefix("--").replace("-", "_"))
            if value:
                with startup_step(setting, value):
                    probe_bind(value)
    if settings.tls_cert and settings.tls_key and settings.tls_client_ca:
        try:
            load_material(
                ServerTlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            )
        except TlsConfigError as exc:
            raise StartupError(f"{TLS_SETTINGS}: {exc}") from exc


#: The TLS flags, named together: a mismatch is fixed in one or the other.
TLS_SETTINGS = "--tls-cert/--tls-key/--tls-client-ca"


def probe_bind(listen: str) -> None:
    """Bind HOST:PORT as the server will (SO_REUSEADDR, as grpc sets it) and let go: raises
    the OSError a real bind would, with its cause (grpc's own error names none). Like grpc,
    one bindable address of the name is enough."""
    host, port = parse_listen(listen)
    first_error: OSError | None = None
    for family, _, _, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                probe.listen(1)
            except OSError as exc:
                first_error = first_error or exc
                continue
            return
    if first_error is not None:
        raise first_error


@contextmanager
def startup_step(setting: str, value: str) -> Iterator[None]:
    """Run one start-up step; any failure becomes a StartupError naming `setting`.

    A ConfigError raised inside already names its setting and passes unchanged."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        raise StartupError(f"{setting} {value}: {reason(exc, setting, value)}") from exc


def reason(exc: BaseException, setting: str = "", value: str = "") -> str:
    """Why `exc` happened, in words a user acts on, on one line."""
    if isinstance(exc, RuntimeError) and "Failed to bind" in str(exc):
        return _bind_reason(setting, value)
    known = _os_reason(exc, setting) or _postgres_reason(exc)
    if known is not None:
        return known
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if type(exc).__module__.startswith("driver_service") and detail:
        return detail  # our own errors are written for the user already
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


#: What a socket error means at start, by errno; {setting} is the flag to change.
_BY_ERRNO = {
    errno.EADDRINUSE: "address already in use (another server listens there; change {setting})",
    errno.EADDRNOTAVAIL: "address not available on this machine (change {setting})",
    errno.EACCES: "permission denied (ports below 1024 need privileges; change {setting})",
    errno.ECONNREFUSED: "connection refused: nothing listens there (is the server running?)",
    errno.ETIMEDOUT: "no answer in time (is the host reachable?)",
}


def _os_reason(exc: BaseException, setting: str) -> str | None:
    """Sockets and names: bind, connect and resolve failures."""
    if isinstance(exc, socket.gaierror):
        return f"host name not found ({exc.strerror})"
    if isinstance(exc, TimeoutError) and exc.errno is None:  # asyncio's own timeouts
        return _BY_ERRNO[errno.ETIMEDOUT]
    if isinstance(exc, OSError) and exc.errno in _BY_ERRNO:
        return _BY_ERRNO[exc.errno].format(setting=setting)
    return None


def _bind_reason(setting: str, value: str) -> str:
    """grpc's bind error names no cause: bind a plain socket to learn it."""
    try:
        probe_bind(value)
    except OSError as exc:
        if exc.errno in {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}:
            return reason(exc, setting, value)
        return f"cannot bind: {exc.strerror or exc} (change {setting})"
    except ConfigError:
        pass
    return f"cannot bind (change {setting})"


def _postgres_reason(exc: BaseException) -> str | None:
    """asyncpg's errors, when asyncpg is installed and raised this one."""
    try:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return None
    if isinstance(
        exc,
        asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError,
    ):
        return "authentication failed: check the user and password in the URL"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "database does not exist: create it, or fix its name in the URL"
    if isinstance(exc, asyncpg.PostgresError):
        first = str(exc).strip().splitlines()
        return f"PostgreSQL refused: {first[0] if first else type(exc).__name__}"
    return None
