"""`driver-service serve`: run the server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from driver_service.cli._env import add_env_option, env_flag, env_name
from driver_service.config import DEFAULT_DATA_DIR, DEFAULT_LISTEN, ConfigError, ServerSettings
from driver_service.storage import StoreLocked


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Every flag can also be set by its environment variable.",
    )
    add_env_option(parser, "--listen", "address to serve on, HOST:PORT", DEFAULT_LISTEN)
    add_env_option(parser, "--data-dir", "directory for the SQLite file", str(DEFAULT_DATA_DIR))
    add_env_option(
        parser,
        "--store",
        "store URL, e.g. sqlite:///path/file.sqlite3 (overrides --data-dir)",
        None,
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=env_flag("--insecure"),
        help=f"serve plaintext, without TLS [env {env_name('--insecure')}]",
    )
    add_env_option(
        parser, "--shutdown-grace", "seconds calls in flight may take to finish on shutdown", "10"
    )
    add_env_option(parser, "--log-level", "DEBUG, INFO, WARNING or ERROR", "INFO")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = ServerSettings(
            listen=args.listen,
            data_dir=Path(args.data_dir),
            store=args.store,
            insecure=args.insecure,
            shutdown_grace_s=_float(args.shutdown_grace, "--shutdown-grace"),
            log_level=args.log_level.upper(),
        ).validate()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"driver-service serve: {line}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from driver_service.server import serve

    try:
        _run_loop(serve(settings))
    except StoreLocked as exc:
        print(f"driver-service serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number") from None


def _run_loop(main: Any) -> None:
    """Run on uvloop when installed (measurably faster for grpc.aio), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
