"""How the client survives servers going away: channel settings (load balancing, keepalive,
transparent GetDriver retries) and the backoff its reconnecting streams wait between attempts."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import grpc

#: The proto service's full name, as the service config's methodConfig names it.
SERVICE: Final = "driver.v1.DriverService"

#: Client keepalive: ping a quiet connection every 30 s and drop it if the ping is not
#: acknowledged within 10 s, so a dead server or a silently dropped NAT/LB path is noticed
#: (and a `watch()` reconnects) within ~40 s rather than after the OS's TCP timeout (hours).
#: The server refuses pings more frequent than every 5 s (`--keepalive-min-time`) and answers
#: too many with GOAWAY too_many_pings; 30 s keeps 6x clear of that.
KEEPALIVE_TIME_S: Final = 30.0
KEEPALIVE_TIMEOUT_S: Final = 10.0
#: The server's default `--keepalive-min-time`, which the client's pings must stay clear of.
SERVER_MIN_PING_INTERVAL_S: Final = 5.0


def keepalive_options(
    time_s: float = KEEPALIVE_TIME_S,
    timeout_s: float = KEEPALIVE_TIMEOUT_S,
    *,
    server_min_time_s: float = SERVER_MIN_PING_INTERVAL_S,
    permit_without_calls: bool = True,
) -> dict[str, int]:
    """The client's keepalive channel arguments (the only definition; `channel_options` uses
    it): it never pings more often than a server with `server_min_time_s` tolerates (at least
    1.5 x that minimum, as timers jitter), pings idle connections only if the server permits
    it, and keeps pinging a connection on which no data flows (a quiet watch stream) instead
    of stopping after two pings."""
    interval_ms = max(1, round(max(time_s, server_min_time_s * 1.5) * 1000))
    timeout_ms = max(1, round(timeout_s * 1000))
    return {
        "grpc.keepalive_time_ms": interval_ms,
        "grpc.keepalive_timeout_ms": timeout_ms,
        # Since grpc/grpc#34647 this (60 s by default) bounds a ping's wait too.
        "grpc.http2.ping_timeout_ms": timeout_ms,
        "grpc.keepalive_permit_without_calls": int(permit_without_calls),
        "grpc.http2.max_pings_without_data": 0,
    }


#: How soon grpc reconnects a channel after a failed connect, and the cap of its own backoff
#: (grpc's defaults are 1 s and 120 s: after a long outage a channel could wait two minutes to
#: notice the server is back). grpc adds ±20 % jitter to each wait.
RECONNECT_INITIAL_MS: Final = 250
RECONNECT_MAX_MS: Final = 5_000

#: GetDriver is idempotent: grpc retries it transparently on UNAVAILABLE (server down,
#: draining or restarting, connection reset), waiting a random time in [0, b] before retry
#: n, where b = min(initialBackoff * backoffMultiplier**(n-1), maxBackoff). Streams are not
#: retried by grpc (it cannot replay a stream once a response has arrived); `watch()` and
#: `upload()` retry themselves, see DriverClient.
GET_DRIVER_RETRY_POLICY: Final = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

#: round_robin spreads calls over every address the target resolves to (gRPC's default,
#: pick_first, sends everything to one server: the seed's mistake #4).
SERVICE_CONFIG: Final = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": SERVICE, "method": "GetDriver"}],
                "retryPolicy": GET_DRIVER_RETRY_POLICY,
            }
        ],
    }
)


def channel_options(extra: Sequence[tuple[str, object]] = ()) -> list[tuple[str, object]]:
    """The client's channel arguments; an argument in `extra` replaces the default of the
    same name (e.g. `("grpc.keepalive_time_ms", 60_000)`)."""
    options: dict[str, object] = {
        "grpc.service_config": SERVICE_CONFIG,
        "grpc.enable_retries": 1,
        **keepalive_options(),
        "grpc.initial_reconnect_backoff_ms": RECONNECT_INITIAL_MS,
        "grpc.max_reconnect_backoff_ms": RECONNECT_MAX_MS,
    }
    options.update(dict(extra))
    return list(options.items())


#: Codes on which retrying the same request cannot help: the request, the credentials or the
#: server's API must change first. Every other code (UNAVAILABLE above all, but also a server
#: cancelling calls as it stops, a deadline, INTERNAL from a cut connection) is retried.
NON_RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter, for the client's reconnecting streams.

    Wait n (n = 1, 2, …) is min(initial * multiplier**(n-1), maximum), scaled by a random
    factor in [1 - jitter, 1 + jitter] (and capped again), so that many clients cut off by the
    same restart do not all come back in the same instant. `max_attempts` bounds how many
    attempts in a row may fail (None: retry forever)."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be within [0, 1]")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (None: forever)")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` (>= 1) failed attempts in a row."""
        base = min(self.initial * self.multiplier ** min(failures - 1, 64), self.maximum)
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)
        return min(base * spread, self.maximum)

    def gives_up_after(self, failures: int) -> bool:
        return self.max_attempts is not None and failures >= self.max_attempts


#: watch(): reconnect forever by default (a watcher is meant to stay open).
DEFAULT_WATCH_BACKOFF: Final = Backoff()
#: upload(): retry one chunk up to 10 times in a row (~20 s of waits) before giving up, so a
#: batch job does not hang forever on a server that never returns.
DEFAULT_UPLOAD_BACKOFF: Final = Backoff(max_attempts=10)


def is_retryable(code: grpc.StatusCode) -> bool:
    return code not in NON_RETRYABLE and code is not grpc.StatusCode.OK
