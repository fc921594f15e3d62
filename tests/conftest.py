"""Fixtures shared by every test tier: private PostgreSQL and Redis servers."""

pytest_plugins = ["tests.servers", "tests.redis_server"]
