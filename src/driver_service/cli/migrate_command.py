"""`driver-service migrate`: bring a store's schema to this release before replicas start.

Replicas may also migrate at start; running it once from a deploy job lets them start with
migrations off, so a schema change is applied by one process, at a time the operator chose.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any
from urllib.parse import urlsplit

from driver_service.cli._env import add_env_option
from driver_service.server.config import ConfigError, parse_sqlite_url


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "migrate",
        help="apply pending schema migrations to the store",
        description="Apply pending schema migrations to the store and exit. Safe to run from "
        "several places at once: PostgreSQL migrations take an advisory lock, and a store "
        "already at this release's version is left untouched.",
    )
    _add_arguments(parser)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_option(
        parser,
        "--store",
        "store URL: postgresql://user@host:5432/db or sqlite:///path/to/drivers.db",
        metavar="URL",
    )
    parser.set_defaults(run=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    url: str | None = args.store
    if not url:
        print("driver-service migrate: --store is required", file=sys.stderr)
        return 2
    import asyncpg  # type: ignore[import-untyped]  # imported here: other commands skip it

    scheme = urlsplit(url).scheme
    try:
        if scheme in {"postgresql", "postgres"}:
            message = asyncio.run(_migrate_postgres(url))
        elif scheme == "sqlite":
            message = asyncio.run(_migrate_sqlite(url))
        else:
            print(
                f"driver-service migrate: unsupported store scheme {scheme!r}"
                " (use postgresql:// or sqlite:///)",
                file=sys.stderr,
            )
            return 2
    except (OSError, RuntimeError, ConfigError) as exc:
        print(f"driver-service migrate: {exc}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"driver-service migrate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


async def _migrate_postgres(url: str) -> str:
    import asyncpg

    import driver_service.adapters.postgres.schema as postgres_schema
    from driver_service.adapters.postgres.repository import redact_url

    connection = await asyncpg.connect(url, timeout=30)
    try:
        applied = await postgres_schema.migrate(connection)
    finally:
        await connection.close()
    return _report(redact_url(url), applied, postgres_schema.SCHEMA_VERSION)


async def _migrate_sqlite(url: str) -> str:
    from driver_service.adapters.sqlite.repository import SqliteRepository
    from driver_service.adapters.sqlite.schema import SCHEMA_VERSION

    repository = await SqliteRepository.open(parse_sqlite_url(url))  # opening migrates
    await repository.close()
    return f"{url}: schema at version {SCHEMA_VERSION}"


def _report(where: str, applied: list[int], version: int) -> str:
    if not applied:
        return f"{where}: schema at version {version}, nothing to apply"
    return f"{where}: applied {', '.join(map(str, applied))}; schema at version {version}"
