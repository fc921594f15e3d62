"""Client commands: `get`, `watch` (and the modules registered below for the rest)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from driver_service.cli._env import add_env_option
from driver_service.cli._output import emit, fail
from driver_service.client import (
    DEFAULT_TIMEOUT_S,
    ClientConfigError,
    ClientSettings,
    DriverClient,
    DriverServiceError,
)
from driver_service.client._settings import DEFAULT_TARGET
from driver_service.client._types import utc_from_ns


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


def register(commands: Any) -> None:
    get = commands.add_parser("get", help="show a driver's status and position")
    get.add_argument("driver_id")
    add_client_options(get)
    get.set_defaults(run=lambda a: asyncio.run(_get(a)))

    watch = commands.add_parser("watch", help="follow a driver's live location (Ctrl-C to stop)")
    watch.add_argument("driver_id")
    watch.add_argument(
        "--count", type=int, default=0, help="stop after this many locations (0: until interrupted)"
    )
    add_client_options(watch)
    watch.set_defaults(run=lambda a: asyncio.run(_watch(a)))

    from driver_service.cli import session_command, simulate_command, upload_command

    upload_command.register(commands)
    session_command.register(commands)
    simulate_command.register(commands)


async def _get(args: argparse.Namespace) -> int:
    async with make_client(args) as client:
        try:
            d = await client.get_driver(args.driver_id)
        except DriverServiceError as error:
            return fail(error, args.json)
    emit(
        {
            "driver_id": d.driver_id,
            "status": d.status,
            "latitude": d.latitude,
            "longitude": d.longitude,
            "last_seen_at": d.last_seen_at,
        },
        args.json,
        f"{d.driver_id}  {d.status:<9}  {d.latitude:.6f},{d.longitude:.6f}  "
        f"last seen {d.last_seen_at.isoformat()}",
    )
    return 0


async def _watch(args: argparse.Namespace) -> int:
    seen = 0
    async with make_client(args) as client:
        try:
            async for loc in client.watch(args.driver_id):
                at = utc_from_ns(loc.recorded_at_ns)
                emit(
                    {
                        "driver_id": loc.driver_id,
                        "latitude": loc.latitude,
                        "longitude": loc.longitude,
                        "speed_mps": loc.speed_mps,
                        "heading_degrees": loc.heading_degrees,
                        "timestamp": at,
                    },
                    args.json,
                    f"{at.isoformat()}  {loc.latitude:.6f},{loc.longitude:.6f}  "
                    f"{loc.speed_mps:5.1f} m/s  {loc.heading_degrees:5.1f}°",
                )
                seen += 1
                if args.count and seen >= args.count:
                    break
        except DriverServiceError as error:
            return fail(error, args.json)
    return 0
