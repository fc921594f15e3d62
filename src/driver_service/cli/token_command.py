"""`driver-service token issue`: sign a development bearer token (JWT)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from driver_service.security.tokens import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    TokenIssuer,
    parse_ttl,
    read_secret_file,
)


def register(commands: Any) -> None:
    token: argparse.ArgumentParser = commands.add_parser(
        "token", help="make development bearer tokens"
    )
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    issue = actions.add_parser(
        "issue",
        help="print a signed JWT for a driver or a service",
        description="Print a signed JWT on stdout. A driver token (--driver ID) acts only for "
        "that driver; a service token carries --scope values (drivers:read, drivers:write, "
        "dispatch, zones, events, history:read, drivers:forget). For development: production "
        "tokens come from your identity provider.",
    )
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--driver", metavar="ID", help="driver id (the token's sub)")
    who.add_argument("--scope", action="append", metavar="SCOPE", help="service scope (repeatable)")
    issue.add_argument("--subject", default="dev-service", help="sub of a service token")
    issue.add_argument("--ttl", default="1h", help="lifetime, e.g. 90s, 15m, 1h, 7d")
    key = issue.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret-file", metavar="FILE", help="HS256 shared secret (>= 32 bytes)")
    key.add_argument("--private-key", metavar="PEM", help="RSA (RS256) or P-256 (ES256) key")
    issue.add_argument("--key-id", help="kid header, to pick the key from a JWKS")
    issue.add_argument("--issuer", default=DEFAULT_ISSUER, help="iss claim")
    issue.add_argument("--audience", default=DEFAULT_AUDIENCE, help="aud claim")
    issue.set_defaults(run=run_issue)


def run_issue(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "issuer": args.issuer,
        "audience": args.audience,
        "key_id": args.key_id,
    }
    try:
        ttl_s = parse_ttl(args.ttl)
        if args.secret_file is not None:
            issuer = TokenIssuer.from_secret(read_secret_file(args.secret_file), **options)
        else:
            issuer = TokenIssuer.from_private_key_file(args.private_key, **options)
    except (OSError, ValueError, TypeError) as exc:
        print(f"driver-service token issue: {exc}", file=sys.stderr)
        return 2
    if args.driver is not None:
        token = issuer.issue_driver(args.driver, ttl_s=ttl_s)
    else:
        token = issuer.issue_service(args.scope, subject=args.subject, ttl_s=ttl_s)
    print(token)
    return 0
