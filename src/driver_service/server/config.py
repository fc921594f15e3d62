"""Typed server settings from flags, `DRIVER_SERVICE_*` environment variables and an optional
TOML file, in that precedence; validated once at start so each mistake is one clear line."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from driver_service.server.keepalive import KeepaliveSettings

DEFAULT_LISTEN = "0.0.0.0:50051"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
DEFAULT_DATA_DIR = Path("./data")
SQLITE_FILE_NAME = "driver-service.sqlite3"
ENV_PREFIX = "DRIVER_SERVICE_"
DEFAULT_AUTH_EXEMPT = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: Every store URL form, for error messages.
SUPPORTED_STORES = (
    "sqlite:///relative/file (to the working directory), sqlite:////absolute/file, "
    "postgresql://user:pw@host:port/db or postgres://…"
)
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("auto", "json", "text")
ACCESS_LOGS = ("all", "errors", "off")
#: A dependency timeout beyond this defeats its purpose (callers' deadlines are seconds).
MAX_DEPENDENCY_TIMEOUT_S = 30.0


class ConfigError(ValueError):
    """One or more settings are invalid; one line per mistake, naming the setting."""


#: Seven days: enough to answer "what happened last week", and a default install's disk
#: holds it (docs/history.md gives the sizes).
DEFAULT_HISTORY_RETENTION = "7d"
DEFAULT_EVENT_RETENTION = "7d"
DEFAULT_NATS_STREAM = "DRIVER_EVENTS"
DEFAULT_NATS_SUBJECT_PREFIX = "driver_service.events"
NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
#: JetStream stream names: no spaces, dots, wildcards or path separators.
_NATS_STREAM = re.compile(r"[A-Za-z0-9_-]{1,255}")
#: Subject tokens joined by dots, without wildcards or spaces.
_NATS_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_RETENTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_RETENTION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_retention_s(text: str, flag: str = "--history-retention") -> float:
    """`7d`, `36h`, `90m`, `3600` (seconds), `2w`; 0 means forever."""
    match = _RETENTION.match(text)
    if match is None:
        raise ConfigError(
            f"{flag} {text!r} is not a duration: write e.g. 7d, 36h, 90m or 0 (keep forever)"
        )
    return float(match.group(1)) * _RETENTION_UNITS[match.group(2) or "s"]


def _setting(default: Any, help_text: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help_text, "secret": secret})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Every setting of `serve`. The field name gives the flag (`--max-message-bytes`), the
    environment variable (`DRIVER_SERVICE_MAX_MESSAGE_BYTES`) and the config-file key."""

    listen: str = _setting(DEFAULT_LISTEN, "address to serve gRPC on, HOST:PORT")
    admin_listen: str = _setting(
        DEFAULT_ADMIN_LISTEN,
        "plaintext admin address: gRPC health for probes and HTTP GET /metrics; empty: off",
    )
    http_listen: str = _setting(
        "",
        "address of the HTTP front door (JSON API, SSE, fleet map), HOST:PORT; HTTPS with the "
        "gRPC server's certificate (plaintext only with --insecure); empty: off",
    )
    http_cors_origin: tuple[str, ...] = _setting(
        (), "origins allowed to call the HTTP API from a browser (comma-separated); none: closed"
    )
    http_max_body_bytes: int = _setting(
        1024 * 1024, "largest HTTP request body accepted (413 past it), bytes"
    )
    http_heartbeat: float = _setting(15.0, "seconds between SSE heartbeat comments")
    map_tiles: str = _setting(
        "",
        "fleet map background tiles, a URL template such as https://HOST/{z}/{x}/{y}.png; "
        "empty: a plain grid with coordinates (no network)",
    )
    workers: int = _setting(
        1, "server processes sharing the port (SO_REUSEPORT); > 1 needs --bus redis://"
    )
    data_dir: Path = _setting(DEFAULT_DATA_DIR, "directory for the SQLite file")
    store: str | None = _setting(
        None,
        "store URL: sqlite:///relative, sqlite:////absolute or postgresql://user:pw@host/db "
        "(overrides --data-dir)",
        secret=True,
    )
    bus: str = _setting(
        "memory",
        "live-location bus and state: memory (one process) or redis://[:pw@]host:port/db",
        secret=True,
    )
    redis_timeout: float = _setting(
        0.5,
        "seconds one Redis operation may take; past it Redis counts as down, is skipped and "
        "probed in the background",
    )
    read_cache_size: int = _setting(
        10_000,
        "with --bus redis://: drivers whose live state each process keeps in memory for "
        "GetDriver, kept fresh by Redis pub/sub; 0: every read goes to Redis",
    )
    read_cache_staleness: float = _setting(
        1.0,
        "with the read cache: the most seconds a cached state may lag what Redis published; "
        "past it (a quiet or hung pub/sub connection) reads go to Redis",
    )
    store_timeout: float = _setting(
        2.0,
        "seconds one PostgreSQL operation (pool wait included) may take; past it the call "
        "answers UNAVAILABLE and the store is probed in the background",
    )
    insecure: bool = _setting(False, "serve plaintext without TLS (development only)")
    tls_cert: Path | None = _setting(None, "server certificate chain (PEM)")
    tls_key: Path | None = _setting(None, "server private key (PEM)")
    tls_client_ca: Path | None = _setting(None, "CA bundle that client certificates must chain to")
    token_secret_file: Path | None = _setting(None, "HS256 shared secret file for bearer tokens")
    token_public_key: Path | None = _setting(None, "RS256/ES256 public key (PEM) for tokens")
    token_jwks: Path | None = _setting(None, "JWKS file with the token signing keys")
    token_issuer: str = _setting("driver-service", "required `iss` of bearer tokens")
    token_audience: str = _setting("driver-service", "required `aud` of bearer tokens")
    token_leeway: float = _setting(30.0, "clock skew allowed on exp/nbf, seconds")
    auth_exempt: tuple[str, ...] = _setting(
        DEFAULT_AUTH_EXEMPT, "services callable without a token (comma-separated)"
    )
    stale_after: float = _setting(
        120.0, "seconds without an event after which a driver is stale (not dispatched)"
    )
    history_retention: str = _setting(
        DEFAULT_HISTORY_RETENTION,
        "how long location history is kept, e.g. 7d, 36h, 90m; 0 keeps it forever "
        "(~4 GB a day per 1,000 drivers reporting every second)",
    )
    history_retention_share: float = _setting(
        0.05,
        "share of the store's time history retention may take while ingestion keeps the "
        "writer busy, 0 < share <= 1 (each expiry step is followed by a rest in proportion; "
        "the less of the writer ingestion uses, the more it takes, up to half when idle; "
        "raise it if a backlog drains too slowly, see docs/history.md)",
    )
    webhook_allow_http: bool = _setting(
        False, "let webhooks use plain http:// URLs (development and tests only)"
    )
    webhook_allow_private: bool = _setting(
        False,
        "let webhooks call loopback, link-local, private and unspecified addresses "
        "(development and tests only: a webhook URL is a classic SSRF vector)",
    )
    webhook_timeout: float = _setting(10.0, "seconds one webhook POST may take")
    webhook_max_age: float = _setting(
        86_400.0, "seconds an event is retried before it becomes a dead letter"
    )
    webhook_max_concurrent: int = _setting(
        64, "webhook deliveries in flight at once, over all endpoints"
    )
    webhook_retry_base: float = _setting(
        1.0, "first webhook retry wait, seconds (doubled per attempt, with jitter)"
    )
    webhook_retry_cap: float = _setting(600.0, "longest wait between webhook retries, seconds")
    webhook_circuit_threshold: int = _setting(
        5, "failed attempts in a row after which an endpoint's circuit opens"
    )
    webhook_circuit_cooldown: float = _setting(
        60.0, "seconds an endpoint with an open circuit waits before one probe"
    )
    nats_url: str = _setting(
        "",
        "publish the event log to NATS JetStream at this URL, e.g. nats://host:4222 "
        "(comma-separated for a cluster); empty: no broker",
    )
    nats_stream: str = _setting(
        DEFAULT_NATS_STREAM, "the JetStream stream events are published to (made if missing)"
    )
    nats_subject_prefix: str = _setting(
        DEFAULT_NATS_SUBJECT_PREFIX,
        "subjects are PREFIX.<event type>, e.g. driver_service.events.zone.enter",
    )
    nats_timeout: float = _setting(5.0, "seconds one JetStream publish may wait for its ack")
    event_retention: str = _setting(
        DEFAULT_EVENT_RETENTION,
        "how long the event log (WatchEvents' replay) is kept, e.g. 7d, 36h; 0 keeps it forever",
    )
    rate_limit: float = _setting(100.0, "location updates per second per driver; 0 disables")
    rate_burst: float = _setting(
        20_000.0, "updates a driver may send at once above the rate (an offline backlog)"
    )
    max_message_bytes: int = _setting(64 * 1024, "largest message accepted, bytes")
    max_concurrent_streams: int = _setting(1000, "concurrent RPCs per HTTP/2 connection")
    shutdown_grace: float = _setting(10.0, "seconds calls in flight may take on shutdown")
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    access_log: str = _setting(
        "all", "per-call log lines: all, errors (calls not ending OK) or off"
    )
    log_format: str = _setting("auto", "json, text, or auto (text on a terminal, else json)")
    reflection: bool = _setting(True, "serve gRPC server reflection")
    keepalive_time: float = _setting(300.0, "server pings an idle connection after, seconds")
    keepalive_timeout: float = _setting(1.0, "ping ack deadline before closing, seconds")
    max_connection_idle: float = _setting(900.0, "close connections idle for, seconds")
    max_connection_age: float = _setting(1800.0, "close connections older than, seconds")
    max_connection_age_grace: float = _setting(5.0, "calls may finish after max age, seconds")
    keepalive_min_time: float = _setting(5.0, "clients may ping at most this often, seconds")
    keepalive_permit_without_stream: bool = _setting(
        True, "allow client pings on connections without calls"
    )

    def validate(self) -> ServerSettings:
        errors = [
            *self._address_errors(),
            *self._security_errors(),
            *self._limit_errors(),
            *self._worker_errors(),
        ]
        if errors:
            raise ConfigError("\n".join(errors))
        return self

    def _address_errors(self) -> list[str]:
        errors: list[str] = []
        for name in ("listen", "admin_listen", "http_listen"):
            value = getattr(self, name)
            if value or name == "listen":
                try:
                    parse_listen(value)
                except ConfigError as exc:
                    errors.append(f"{flag(name)}: {exc}")
        if self.store is not None and not self.store.startswith(POSTGRES_SCHEMES):
            try:
                parse_sqlite_url(self.store)
            except ConfigError as exc:
                errors.append(f"--store: {exc}")
        if self.map_tiles and not (
            self.map_tiles.startswith(("https://", "http://"))
            and all(part in self.map_tiles for part in ("{z}", "{x}", "{y}"))
        ):
            errors.append(
                f"--map-tiles: {self.map_tiles!r} is not an http(s) URL template with {{z}}, "
                "{x} and {y}"
            )
        errors.extend(
            f"--http-cors-origin: {origin!r} is not an origin such as https://ops.example"
            for origin in self.http_cors_origin
            if not re.fullmatch(r"https?://[^/\s*]+", origin)
        )
        if self.bus != "memory" and not self.bus.startswith(REDIS_SCHEMES):
            errors.append(f"--bus: {mask_url(self.bus)!r} is not memory or a redis:// URL")
        errors.extend(self._nats_errors())
        return errors

    def _nats_errors(self) -> list[str]:
        errors = [
            f"--nats-url: {mask_url(url)!r} is not a nats://HOST:PORT URL"
            for url in self.nats_urls
            if not (url.startswith(NATS_SCHEMES) and len(url.partition("://")[2]) > 0)
        ]
        if self.nats_url and not self.nats_urls:
            errors.append("--nats-url: no URL given")
        if not _NATS_STREAM.fullmatch(self.nats_stream):
            errors.append(
                f"--nats-stream: {self.nats_stream!r} is not a stream name (letters, digits,"
                " - and _)"
            )
        if not _NATS_SUBJECT.fullmatch(self.nats_subject_prefix):
            errors.append(
                f"--nats-subject-prefix: {self.nats_subject_prefix!r} is not a subject without"
                " wildcards (tokens of letters, digits, - and _ joined by dots)"
            )
        if not 0 < self.nats_timeout <= MAX_DEPENDENCY_TIMEOUT_S:
            errors.append(
                f"--nats-timeout must be > 0 and at most {MAX_DEPENDENCY_TIMEOUT_S:.0f} seconds"
            )
        return errors

    @property
    def nats_urls(self) -> list[str]:
        """The NATS servers to connect to; empty: no broker sink."""
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    def _security_errors(self) -> list[str]:
        errors: list[str] = []
        tls = [self.tls_cert, self.tls_key, self.tls_client_ca]
        if any(tls) and not all(tls):
            errors.append("--tls-cert, --tls-key and --tls-client-ca must be given together")
        token_sources = [s for s in self._token_sources() if s is not None]
        if len(token_sources) > 1:
            errors.append("give only one of --token-secret-file, --token-public-key, --token-jwks")
        if not self.insecure and not all(tls):
            errors.append(
                "TLS is required: give --tls-cert, --tls-key and --tls-client-ca "
                "(`driver-service certs init DIR` makes development ones), "
                "or --insecure for plaintext"
            )
        if not self.insecure and not token_sources:
            errors.append(
                "token validation is required: give --token-secret-file, "
                "--token-public-key or --token-jwks, or --insecure"
            )
        errors.extend(
            f"{flag(name)}: file {path} does not exist"
            for name in (
                "tls_cert",
                "tls_key",
                "tls_client_ca",
                "token_secret_file",
                "token_public_key",
                "token_jwks",
            )
            if (path := getattr(self, name)) is not None and not Path(path).is_file()
        )
        errors.extend(
            f"--auth-exempt: {name} can never be exempt from authentication"
            for name in self.auth_exempt
            if name.startswith("driver.v1.")
        )
        return errors

    def _worker_errors(self) -> list[str]:
        if self.workers < 1:
            return ["--workers must be >= 1"]
        if self.workers == 1:
            return []
        errors = []
        if self.bus == "memory":
            errors.append(
                "--workers > 1 needs --bus redis://HOST:PORT: on the in-memory bus a watcher "
                "on one worker would never see updates accepted by another"
            )
        if self.store is None or self.store.startswith("sqlite:"):
            errors.append(
                "--workers > 1 needs a shared store (--store postgresql://…): one SQLite file "
                "is locked by one process"
            )
        with contextlib.suppress(ConfigError):  # a bad --listen is reported on its own
            if parse_listen(self.listen)[1] == 0:
                errors.append("--workers > 1 needs a fixed --listen port for workers to share")
        with contextlib.suppress(ConfigError):
            if self.http_listen and parse_listen(self.http_listen)[1] == 0:
                errors.append("--workers > 1 needs a fixed --http-listen port for workers to share")
        return errors

    def _retention_errors(self) -> list[str]:
        """Each retention is a duration: 0 keeps forever, else at least an hour."""
        errors = []
        for name, value in (
            ("--history-retention", self.history_retention),
            ("--event-retention", self.event_retention),
        ):
            try:
                retention = parse_retention_s(value, name)
            except ConfigError as exc:
                errors.append(str(exc))
            else:
                if 0 < retention < 3600:
                    errors.append(f"{name} must be 0 (forever) or at least 1h")
        return errors

    def _limit_errors(self) -> list[str]:
        errors = [
            f"{flag(name)} must be >= 0"
            for name in ("shutdown_grace", "token_leeway", "rate_limit")
            if getattr(self, name) < 0
        ]
        errors.extend(
            f"{flag(name)} must be > 0 seconds"
            for name in (
                "stale_after",
                "keepalive_time",
                "keepalive_timeout",
                "max_connection_idle",
                "max_connection_age",
                "max_connection_age_grace",
                "keepalive_min_time",
                "webhook_timeout",
                "webhook_max_age",
                "webhook_retry_base",
                "webhook_retry_cap",
                "webhook_circuit_cooldown",
                "http_heartbeat",
            )
            if not getattr(self, name) > 0
        )
        if not 1024 <= self.http_max_body_bytes <= 64 * 1024 * 1024:
            errors.append("--http-max-body-bytes must be between 1024 and 67108864")
        errors.extend(
            f"{flag(name)} must be >= 1"
            for name in ("webhook_max_concurrent", "webhook_circuit_threshold")
            if getattr(self, name) < 1
        )
        errors.extend(
            f"{flag(name)} must be > 0 and at most {MAX_DEPENDENCY_TIMEOUT_S:.0f} seconds"
            for name in ("redis_timeout", "store_timeout")
            if not 0 < getattr(self, name) <= MAX_DEPENDENCY_TIMEOUT_S
        )
        errors.extend(self._retention_errors())
        if self.read_cache_size < 0:
            errors.append("--read-cache-size must be >= 0 (0: off)")
        if not 0 < self.read_cache_staleness <= MAX_DEPENDENCY_TIMEOUT_S:
            errors.append(
                f"--read-cache-staleness must be > 0 and at most "
                f"{MAX_DEPENDENCY_TIMEOUT_S:.0f} seconds"
            )
        if not 0 < self.history_retention_share <= 1:
            errors.append("--history-retention-share must be > 0 and at most 1 (e.g. 0.05)")
        if self.rate_limit > 0 and self.rate_burst < 1:
            errors.append("--rate-burst must be >= 1")
        if not 1024 <= self.max_message_bytes <= 64 * 1024 * 1024:
            errors.append("--max-message-bytes must be between 1024 and 67108864")
        if self.max_concurrent_streams < 1:
            errors.append("--max-concurrent-streams must be >= 1")
        if self.log_level not in LOG_LEVELS:
            errors.append(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.access_log not in ACCESS_LOGS:
            errors.append(f"--access-log must be one of {', '.join(ACCESS_LOGS)}")
        if self.log_format not in LOG_FORMATS:
            errors.append(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
        return errors

    @property
    def history_retention_s(self) -> float:
        """The retention in seconds; 0 keeps history forever."""
        return parse_retention_s(self.history_retention)

    @property
    def event_retention_s(self) -> float:
        """The event log's retention in seconds; 0 keeps it forever."""
        return parse_retention_s(self.event_retention, "--event-retention")

    def keepalive(self) -> KeepaliveSettings:
        return KeepaliveSettings(
            time_s=self.keepalive_time,
            timeout_s=self.keepalive_timeout,
            max_connection_idle_s=self.max_connection_idle,
            max_connection_age_s=self.max_connection_age,
            max_connection_age_grace_s=self.max_connection_age_grace,
            min_time_s=self.keepalive_min_time,
            permit_without_stream=self.keepalive_permit_without_stream,
        )

    def _token_sources(self) -> list[Path | None]:
        return [self.token_secret_file, self.token_public_key, self.token_jwks]

    @property
    def auth_enabled(self) -> bool:
        return any(s is not None for s in self._token_sources())

    @property
    def uses_postgres(self) -> bool:
        return self.store is not None and self.store.startswith(POSTGRES_SCHEMES)

    def sqlite_path(self) -> Path:
        """The SQLite file: from `--store sqlite:///path` if given, else under the data dir;
        absolute, so logs and `config show` say where a relative one really is."""
        if self.store is None:
            return (self.data_dir / SQLITE_FILE_NAME).absolute()
        return parse_sqlite_url(self.store).absolute()

    def relative_sqlite_url(self) -> bool:
        """`sqlite:///x` (three slashes) is relative to the working directory, as in
        SQLAlchemy; `sqlite:////x` is absolute. Easy to mix up, so start-up says which."""
        return (
            self.store is not None
            and not self.uses_postgres
            and not parse_sqlite_url(self.store).is_absolute()
        )

    def store_description(self) -> str:
        """Where data goes, for logs: a path, or the URL with its password masked."""
        if self.uses_postgres:
            return mask_url(self.store or "")
        return str(self.sqlite_path())

    def listen_is_loopback(self) -> bool:
        host, _ = parse_listen(self.listen)
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def shown(self) -> dict[str, Any]:
        """Effective settings for display, secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = mask_url(str(value))
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        if not self.uses_postgres:
            with contextlib.suppress(ConfigError):
                out["sqlite_file"] = str(self.sqlite_path())
        return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def setting_fields() -> tuple[dataclasses.Field[Any], ...]:
    return fields(ServerSettings)


def setting_kind(f: dataclasses.Field[Any]) -> str:
    """The value kind of a field: bool, int, float, path, tuple or str."""
    text = str(f.type)
    for kind, marker in (
        ("bool", "bool"),
        ("int", "int"),
        ("float", "float"),
        ("path", "Path"),
        ("tuple", "tuple"),
    ):
        if text.startswith(marker) or text == marker:
            return kind
    return "str"


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def _to_tuple(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return tuple(str(i).strip() for i in items if str(i).strip())


_CONVERTERS: dict[str, Any] = {
    "bool": _to_bool,
    "int": int,
    "float": float,
    "path": lambda raw: Path(str(raw)) if str(raw) else None,
    "tuple": _to_tuple,
    "str": lambda raw: None if raw is None else str(raw),
}


def convert(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    """Turn a flag, environment or file value into the field's type; ConfigError names source."""
    try:
        return _CONVERTERS[setting_kind(f)](raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {raw!r} is not valid: {exc}") from None


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: Path | None = None,
) -> ServerSettings:
    """Build settings from flags given (not None), then environment, then the TOML file,
    then defaults; collect every mistake before failing."""
    settings, problems = read_settings(flags, env, config_file)
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def read_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: Path | None = None,
) -> tuple[ServerSettings, list[str]]:
    """The effective settings and every problem `serve` would refuse them for (a value that
    does not convert keeps its default and is listed), so `config show` can show both."""
    file_values: dict[str, Any] = {}
    errors: list[str] = []
    if config_file is not None:
        try:
            raw = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {config_file}: {exc}") from None
        file_values = {k.replace("-", "_"): v for k, v in raw.items()}
        known = {f.name for f in setting_fields()}
        errors.extend(
            f"--config {config_file}: unknown setting {key!r}"
            for key in file_values
            if key not in known
        )
    values: dict[str, Any] = {}
    for f in setting_fields():
        try:
            if flags.get(f.name) is not None:
                values[f.name] = convert(f, flags[f.name], flag(f.name))
            elif env_name(f.name) in env:
                values[f.name] = convert(f, env[env_name(f.name)], env_name(f.name))
            elif f.name in file_values:
                values[f.name] = convert(f, file_values[f.name], f"{config_file}: {f.name}")
        except ConfigError as exc:
            errors.append(str(exc))
    if values.get("log_level"):
        values["log_level"] = str(values["log_level"]).upper()
    settings = ServerSettings(**values)
    try:
        settings.validate()
    except ConfigError as exc:
        errors.extend(str(exc).splitlines())
    return settings, errors


_URL_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*@")


def mask_url(url: str) -> str:
    return _URL_PASSWORD.sub(r"\1****@", url)


def parse_sqlite_url(url: str) -> Path:
    """`sqlite:///relative/file.db` or `sqlite:////absolute/file.db` (SQLAlchemy's form)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        scheme = url.partition("://")[0] if "://" in url else url
        raise ConfigError(f"store URL scheme {scheme!r} is not supported: use {SUPPORTED_STORES}")
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


def grpc_address(listen: str) -> str:
    host, port = parse_listen(listen)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
