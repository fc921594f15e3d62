"""Settings of an in-process production server on each kind of store, for tests that run the
same checks on SQLite and on PostgreSQL + Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver_service.server.config import ServerSettings
from tests.helpers.redis import RedisServer

#: Parameters of a `settings` fixture: one server per kind of store.
STORE_KINDS = ["sqlite", "postgres+redis"]


def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> ServerSettings:
    """Insecure, no rate limit, no admin port; SQLite in `tmp_path`, or a fresh PostgreSQL
    database with a private Redis (the fixtures `postgres_url` and `private_redis`)."""
    if request.param == "sqlite":
        return ServerSettings(
            listen="127.0.0.1:0", admin_listen="", data_dir=tmp_path, insecure=True, rate_limit=0
        )
    redis: RedisServer = request.getfixturevalue("private_redis")
    return replica_settings(request.getfixturevalue("postgres_url"), redis)


def replica_settings(postgres_url: str, redis: RedisServer) -> ServerSettings:
    """A replica's settings on PostgreSQL and Redis (insecure, no rate limit, no admin port;
    the default read cache): several built from them share the store and Redis."""
    return ServerSettings(
        listen="127.0.0.1:0",
        admin_listen="",
        store=postgres_url,
        bus=redis.url,
        insecure=True,
        rate_limit=0,
    )
