"""Flags whose defaults come from `DRIVER_SERVICE_*` environment variables."""

from __future__ import annotations

import argparse
import os

from driver_service.server.config import ENV_PREFIX


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_env_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    help_text: str,
    default: str | None = None,
    metavar: str | None = None,
    *,
    env: str | None = None,
    secret: bool = False,
) -> None:
    """An option that falls back to its environment variable, named in the help
    (`env` overrides the variable's suffix; a secret's value is never shown)."""
    variable = ENV_PREFIX + env if env else env_name(flag)
    shown = "hidden" if secret else default
    parser.add_argument(
        flag,
        default=os.environ.get(variable, default),
        metavar=metavar,
        help=f"{help_text} [env {variable}; default {shown}]",
    )
