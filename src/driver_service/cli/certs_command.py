"""`driver-service certs init DIR`: development CA, server and client certificates."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from driver_service.security.devcerts import DEFAULT_DAYS, create_dev_certs


def register(commands: Any) -> None:
    certs: argparse.ArgumentParser = commands.add_parser(
        "certs", help="make development TLS certificates"
    )
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create a dev CA, server cert and client cert in DIR",
        description="Write ca.crt, ca.key, server.crt, server.key, client.crt and client.key "
        "(keys mode 0600). The server certificate names localhost, 127.0.0.1, ::1 and every "
        "--name. For development only: production mounts certificates from a real CA.",
    )
    init.add_argument("directory", metavar="DIR")
    init.add_argument(
        "--name",
        action="append",
        default=[],
        help="extra DNS name or IP for the server certificate (repeatable)",
    )
    init.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also write NAME.crt/NAME.key client certificates (repeatable)",
    )
    init.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity in days")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(run=run_init)


def run_init(args: argparse.Namespace) -> int:
    if args.days < 1:
        print("driver-service certs init: --days must be at least 1", file=sys.stderr)
        return 2
    try:
        paths = create_dev_certs(
            args.directory,
            args.name,
            extra_clients=args.client,
            days=args.days,
            overwrite=args.force,
        )
    except FileExistsError as exc:
        print(f"driver-service certs init: {exc} (use --force)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"driver-service certs init: {exc}", file=sys.stderr)
        return 1
    d = paths.directory
    print(f"wrote development certificates to {d}")
    print(
        f"  serve:  --tls-cert {paths.server_cert} --tls-key {paths.server_key} "
        f"--tls-client-ca {paths.ca_cert}"
    )
    print(f"  client: --ca {paths.ca_cert} --cert {paths.client_cert} --key {paths.client_key}")
    return 0
