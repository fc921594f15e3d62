"""The keepalive settings, the server's and the client's, map to grpc core's exact argument
names and units."""

from __future__ import annotations

import math

import pytest

from driver_service.client._retry import channel_options, keepalive_options
from driver_service.server.keepalive import INT_MAX, KeepaliveSettings, server_options


def test_defaults_are_the_seeds_values_in_grpc_argument_names() -> None:
    assert dict(server_options(KeepaliveSettings())) == {
        "grpc.keepalive_time_ms": 300_000,
        "grpc.keepalive_timeout_ms": 1_000,
        "grpc.http2.ping_timeout_ms": 1_000,
        "grpc.max_connection_idle_ms": 900_000,
        "grpc.max_connection_age_ms": 1_800_000,
        "grpc.max_connection_age_grace_ms": 5_000,
        "grpc.http2.min_ping_interval_without_data_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_ping_strikes": 2,
    }


def test_every_value_is_an_int_and_infinity_means_unlimited() -> None:
    options = server_options(KeepaliveSettings(max_connection_age_s=math.inf, time_s=0.0004))
    assert all(isinstance(value, int) for _, value in options)
    assert dict(options)["grpc.max_connection_age_ms"] == INT_MAX
    assert dict(options)["grpc.keepalive_time_ms"] == 1  # never 0, which grpc reads as "off"


@pytest.mark.parametrize("field", ["time_s", "timeout_s", "min_time_s", "max_connection_idle_s"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_non_positive_durations_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        KeepaliveSettings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("min_time_s", [0.1, 5.0, 60.0])
def test_client_never_pings_more_often_than_the_server_allows(min_time_s: float) -> None:
    options = keepalive_options(time_s=1.0, server_min_time_s=min_time_s)
    assert options["grpc.keepalive_time_ms"] >= min_time_s * 1000 * 1.5
    assert options["grpc.http2.max_pings_without_data"] == 0


def test_client_pings_idle_connections_only_when_the_server_permits_it() -> None:
    allowed = keepalive_options(permit_without_calls=True)
    refused = keepalive_options(permit_without_calls=False)
    assert allowed["grpc.keepalive_permit_without_calls"] == 1
    assert refused["grpc.keepalive_permit_without_calls"] == 0


def test_the_clients_channels_carry_its_keepalive_tuned_to_the_servers_defaults() -> None:
    server = KeepaliveSettings()
    tuned = keepalive_options(
        server_min_time_s=server.min_time_s, permit_without_calls=server.permit_without_stream
    )
    assert (
        tuned
        == keepalive_options()
        == {
            "grpc.keepalive_time_ms": 30_000,
            "grpc.keepalive_timeout_ms": 10_000,
            "grpc.http2.ping_timeout_ms": 10_000,
            "grpc.keepalive_permit_without_calls": 1,
            "grpc.http2.max_pings_without_data": 0,
        }
    )
    assert tuned.items() <= dict(channel_options()).items()


def test_a_callers_channel_option_replaces_the_keepalive_default() -> None:
    options = dict(channel_options([("grpc.keepalive_time_ms", 60_000)]))
    assert options["grpc.keepalive_time_ms"] == 60_000
