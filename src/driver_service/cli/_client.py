"""The options every client command shares and the client they make: one module below all
the client commands, so none of them imports another."""

from __future__ import annotations

import argparse

import grpc

from driver_service.cli._env import add_env_option
from driver_service.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    ClientConfigError,
    ClientSettings,
    DriverClient,
    channel_options,
)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    add_env_option(
        parser, "--target", "server address (HOST:PORT, dns:///name:port, …)", DEFAULT_TARGET
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline per call in seconds [default {DEFAULT_TIMEOUT_S}]",
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines for scripts")
    tls = parser.add_argument_group("TLS and authentication (plaintext without --ca)")
    add_env_option(tls, "--ca", "CA certificate that signed the server's", None, env="CLIENT_CA")
    add_env_option(tls, "--cert", "client certificate for mTLS", None, env="CLIENT_CERT")
    add_env_option(tls, "--key", "client private key for mTLS", None, env="CLIENT_KEY")
    add_env_option(
        tls, "--token", "bearer token (JWT) sent on every call", None, env="TOKEN", secret=True
    )


def client_settings(args: argparse.Namespace) -> ClientSettings:
    """The library's settings from the common options (which default to the same
    DRIVER_SERVICE_* variables as ClientSettings.from_env)."""
    return ClientSettings(args.target, args.ca, args.cert, args.key, args.token)


def make_client(args: argparse.Namespace) -> DriverClient:
    """A client from the common options; TLS when --ca is given, a bearer token if any. An
    unusable setting (a missing file) exits with one line naming it."""
    try:
        return DriverClient.from_settings(client_settings(args), timeout=args.timeout)
    except ClientConfigError as exc:
        raise SystemExit(f"driver-service: {exc}") from None


def open_channel(args: argparse.Namespace) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """A channel and call metadata from the common options, for commands that call the
    generated stubs of services the client library does not wrap (zones, events)."""
    settings = client_settings(args)
    try:
        credentials = settings.credentials()
    except ClientConfigError as exc:
        raise SystemExit(f"driver-service: {exc}") from None
    if credentials is not None:
        channel = grpc.aio.secure_channel(args.target, credentials, options=channel_options())
    else:
        channel = grpc.aio.insecure_channel(args.target, options=channel_options())
    return channel, settings.metadata()
