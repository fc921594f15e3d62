"""Typed server settings, read from flags with `DRIVER_SERVICE_*` environment fallbacks,
validated once at start so a mistake is one clear line, not a stack trace later."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LISTEN = "0.0.0.0:50051"
DEFAULT_DATA_DIR = Path("./data")
SQLITE_FILE_NAME = "driver-service.sqlite3"
ENV_PREFIX = "DRIVER_SERVICE_"


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and what is expected."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = DEFAULT_DATA_DIR
    store: str | None = None
    insecure: bool = False
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    reflection: bool = True

    def validate(self) -> ServerSettings:
        errors: list[str] = []
        try:
            parse_listen(self.listen)
        except ConfigError as exc:
            errors.append(str(exc))
        try:
            self.sqlite_path()
        except ConfigError as exc:
            errors.append(str(exc))
        if not self.insecure:
            errors.append(
                "TLS is not available yet: pass --insecure (or DRIVER_SERVICE_INSECURE=1) "
                "to serve plaintext"
            )
        if self.shutdown_grace_s < 0:
            errors.append("shutdown grace must be >= 0 seconds")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            errors.append("log level must be one of DEBUG, INFO, WARNING, ERROR")
        if errors:
            raise ConfigError("\n".join(errors))
        return self

    def sqlite_path(self) -> Path:
        """The SQLite file: from `--store sqlite:///path` if given, else under the data dir."""
        if self.store is None:
            return self.data_dir / SQLITE_FILE_NAME
        return parse_sqlite_url(self.store)

    def listen_is_loopback(self) -> bool:
        host, _ = parse_listen(self.listen)
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def parse_sqlite_url(url: str) -> Path:
    """`sqlite:///relative/file.db` or `sqlite:////absolute/file.db` (SQLAlchemy's form)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f"store URL {url!r} is not supported: use sqlite:///path/to/file.sqlite3")
    return Path(url[len(prefix) :])


def parse_listen(listen: str) -> tuple[str, int]:
    """Split HOST:PORT, accepting [v6]:PORT; port 0 picks a free port."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT, e.g. 0.0.0.0:50051")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"listen port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen port {port} is out of range 0..65535")
    return host, port
