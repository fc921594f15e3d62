"""Keepalive and connection-lifetime settings, mapped to grpc core's channel arguments.

grpc core silently ignores an argument it does not know, so the names below are the exact
strings of `include/grpc/impl/channel_arg_names.h`, and tests/integration/test_keepalive.py
proves each one takes effect on a real server. Note the server-side ping enforcement is
GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, whose string is
"grpc.http2.min_ping_interval_without_data_ms" (there is no "...min_recv_ping..." argument),
and "grpc.http2.min_time_between_pings_ms" is deprecated and has no effect.

The server's side only: the client's keepalive is `driver_service.client._retry.keepalive_options`
(the client library imports nothing of the server).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

KEEPALIVE_TIME_MS: Final = "grpc.keepalive_time_ms"
KEEPALIVE_TIMEOUT_MS: Final = "grpc.keepalive_timeout_ms"
KEEPALIVE_PERMIT_WITHOUT_CALLS: Final = "grpc.keepalive_permit_without_calls"
MAX_CONNECTION_IDLE_MS: Final = "grpc.max_connection_idle_ms"
MAX_CONNECTION_AGE_MS: Final = "grpc.max_connection_age_ms"
MAX_CONNECTION_AGE_GRACE_MS: Final = "grpc.max_connection_age_grace_ms"
#: Server enforcement: the shortest interval at which a client may ping while no data flows.
MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: Final = "grpc.http2.min_ping_interval_without_data_ms"
MAX_PING_STRIKES: Final = "grpc.http2.max_ping_strikes"
#: How long a sent ping may go unacknowledged. Internal to chttp2 (GRPC_ARG_PING_TIMEOUT_MS in
#: src/core/ext/transport/chttp2/transport/internal.h); since grpc/grpc#34647 its 60 s default
#: overrides a shorter keepalive timeout, so it is set to the keepalive timeout too.
PING_TIMEOUT_MS: Final = "grpc.http2.ping_timeout_ms"

#: grpc core's "unlimited" for the *_ms arguments.
INT_MAX: Final = 2**31 - 1


def _ms(seconds: float) -> int:
    """Seconds to grpc's int milliseconds; infinity (or anything beyond) means unlimited."""
    if math.isinf(seconds) or seconds * 1000 >= INT_MAX:
        return INT_MAX
    return max(1, round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class KeepaliveSettings:
    """The seed's Step 4 values as defaults; every duration in seconds (math.inf: no limit)."""

    #: The server pings a connection that has been quiet this long, to find dead peers.
    time_s: float = 300.0
    #: ... and closes it if the ping is not acknowledged within this.
    timeout_s: float = 1.0
    #: A connection without calls for this long is closed (GOAWAY) so idle clients let go.
    max_connection_idle_s: float = 900.0
    #: Every connection is closed after this long, so clients rebalance onto new replicas.
    max_connection_age_s: float = 1800.0
    #: Calls in flight at max age may still finish within this.
    max_connection_age_grace_s: float = 5.0
    #: Clients may ping at most this often while no data flows; more often is a strike.
    min_time_s: float = 5.0
    #: Clients may ping a connection with no calls (and the server pings those too).
    permit_without_stream: bool = True
    #: Strikes tolerated before GOAWAY too_many_pings (grpc's own default, made explicit).
    max_ping_strikes: int = 2

    def __post_init__(self) -> None:
        for name in (
            "time_s",
            "timeout_s",
            "max_connection_idle_s",
            "max_connection_age_s",
            "max_connection_age_grace_s",
            "min_time_s",
        ):
            value = getattr(self, name)
            if math.isnan(value) or value <= 0:
                raise ValueError(f"keepalive {name} must be > 0 seconds, got {value!r}")
        if self.max_ping_strikes < 0:
            raise ValueError("keepalive max_ping_strikes must be >= 0 (0: unlimited)")


def server_options(settings: KeepaliveSettings) -> list[tuple[str, int]]:
    """Channel arguments for `grpc.aio.server(options=...)`."""
    return [
        (KEEPALIVE_TIME_MS, _ms(settings.time_s)),
        (KEEPALIVE_TIMEOUT_MS, _ms(settings.timeout_s)),
        (PING_TIMEOUT_MS, _ms(settings.timeout_s)),
        (MAX_CONNECTION_IDLE_MS, _ms(settings.max_connection_idle_s)),
        (MAX_CONNECTION_AGE_MS, _ms(settings.max_connection_age_s)),
        (MAX_CONNECTION_AGE_GRACE_MS, _ms(settings.max_connection_age_grace_s)),
        (MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, _ms(settings.min_time_s)),
        (KEEPALIVE_PERMIT_WITHOUT_CALLS, int(settings.permit_without_stream)),
        (MAX_PING_STRIKES, settings.max_ping_strikes),
    ]
