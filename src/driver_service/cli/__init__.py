"""The `driver-service` command: `serve`, and client commands that talk to a server."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# grpc core logs every failed TLS handshake to stderr (`I0000 … Handshake failed`), on the
# client and the server, outside our log format; our errors say what went wrong instead.
# Set GRPC_VERBOSITY=INFO to see grpc's own lines again. Before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from driver_service.cli import (
    bench_command,
    certs_command,
    client_commands,
    dispatch_commands,
    history_commands,
    migrate_command,
    serve_command,
    session_command,
    simulate_command,
    token_command,
    upload_command,
    webhook_commands,
    zone_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driver-service",
        description="Driver locations, availability and live tracking over gRPC.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_command.register(commands)
    certs_command.register(commands)
    token_command.register(commands)
    migrate_command.register(commands)
    bench_command.register(commands)
    client_commands.register(commands)
    upload_command.register(commands)
    session_command.register(commands)
    simulate_command.register(commands)
    dispatch_commands.register(commands)
    webhook_commands.register(commands)
    history_commands.register(commands)
    zone_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`… | head`): stop quietly, as shell tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # SIGPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
