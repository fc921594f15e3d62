"""`driver-service serve` and `driver-service config show`: settings from flags, environment
and an optional TOML file, then run the server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from driver_service.server.config import (
    ConfigError,
    ServerSettings,
    env_name,
    flag,
    read_settings,
    setting_fields,
    setting_kind,
)

T = TypeVar("T")

CONFIG_ENV = env_name("config")


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerSettings field; unset flags stay None so that environment and
    file values can fill them in (see config.load_settings)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML file of settings (keys are the flag names) [env {CONFIG_ENV}]",
    )
    defaults = ServerSettings()
    for f in setting_fields():
        default = getattr(defaults, f.name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default {shown}]"
        if setting_kind(f) == "bool":
            parser.add_argument(
                flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag(f.name), default=None, metavar=f.name.upper(), help=help_text)


def settings_from(args: argparse.Namespace) -> ServerSettings:
    settings, problems = settings_and_problems(args)
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def settings_and_problems(args: argparse.Namespace) -> tuple[ServerSettings, list[str]]:
    config_file = args.config
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    flags = {f.name: getattr(args, f.name) for f in setting_fields()}
    return read_settings(flags, os.environ, config_file)


def register(commands: Any) -> None:
    serve: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Precedence: flag, then environment variable, then "
        "--config file, then default. Without --insecure, TLS material and a token key are "
        "required.",
    )
    add_setting_flags(serve)
    serve.set_defaults(run=run)

    config: argparse.ArgumentParser = commands.add_parser("config", help="inspect settings")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print the effective serve settings (secrets masked), then anything `serve` "
        "would refuse them for (exit 2)",
    )
    add_setting_flags(show)
    show.set_defaults(run=show_settings)


def _report(exc: ConfigError, command: str) -> int:
    for line in str(exc).splitlines():
        print(f"driver-service {command}: {line}", file=sys.stderr)
    return 2


def show_settings(args: argparse.Namespace) -> int:
    """Print the effective settings (JSON, secrets masked) even when `serve` would refuse
    them, then what it would refuse them for, one line each on stderr (exit 2): a user
    sees what is set and what is missing in one go."""
    try:
        settings, problems = settings_and_problems(args)
    except ConfigError as exc:  # an unreadable --config file: nothing to show
        return _report(exc, "config show")
    print(json.dumps(settings.shown(), indent=2), flush=True)
    if problems:
        print("driver-service config show: `serve` would refuse these settings:", file=sys.stderr)
        return _report(ConfigError("\n".join(problems)), "config show")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        return _report(exc, "serve")
    from driver_service.observability.logs import configure_logging
    from driver_service.server.running import serve
    from driver_service.server.workers import Supervisor, watch_supervisor, worker_index

    configure_logging(settings.log_level, settings.log_format, worker_index())
    if settings.workers > 1:
        from driver_service.server.startup import preflight

        try:  # a taken port or bad TLS files: one line here, not N workers failing alike
            preflight(settings)
        except ConfigError as exc:
            return _report(exc, "serve")
        return asyncio.run(Supervisor(settings).run())
    watch_supervisor()
    try:
        code = run_loop(serve(settings))
    except ConfigError as exc:  # every start-up failure, one line naming the setting
        return _report(exc, "serve")
    return code


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed (measurably faster for grpc.aio), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
