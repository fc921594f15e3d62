"""Flags whose defaults come from `DRIVER_SERVICE_*` environment variables."""

from __future__ import annotations

import argparse
import os

from driver_service.config import ENV_PREFIX

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def env_default(flag: str, default: str | None) -> str | None:
    return os.environ.get(env_name(flag), default)


def env_flag(flag: str) -> bool:
    value = os.environ.get(env_name(flag), "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise SystemExit(f"{env_name(flag)}={value!r}: expected one of 1/0, true/false, yes/no")


def add_env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    help_text: str,
    default: str | None = None,
    metavar: str | None = None,
) -> None:
    """An option that falls back to its environment variable, named in the help."""
    parser.add_argument(
        flag,
        default=env_default(flag, default),
        metavar=metavar,
        help=f"{help_text} [env {env_name(flag)}; default {default}]",
    )
