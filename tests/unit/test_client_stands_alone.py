"""The client library stands alone: a program that only wants a client must not load the
server's modules or its dependencies (Redis, PostgreSQL, Prometheus, JWT) with it."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_PACKAGES = (
    "driver_service.adapters",
    "driver_service.api",
    "driver_service.app",
    "driver_service.dispatch",
    "driver_service.interceptors",
    "driver_service.observability",
    "driver_service.ports",
    "driver_service.resilience",
    "driver_service.security",
    "driver_service.server",
)
SERVER_DEPENDENCIES = ("redis", "asyncpg", "prometheus_client", "jwt")

PROBE = "import driver_service.client, json, sys; print(json.dumps(sorted(sys.modules)))"


def loaded_by(statement: str) -> list[str]:
    """The modules a fresh interpreter has loaded after `statement` (this process has long
    loaded the server, so only a new one can tell)."""
    out = subprocess.run(
        [sys.executable, "-c", statement], capture_output=True, text=True, check=True, timeout=60
    )
    modules: list[str] = json.loads(out.stdout)
    return modules


def under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    modules = loaded_by(PROBE)
    assert "driver_service.client" in modules
    assert [m for m in modules if under(m, SERVER_PACKAGES)] == []
    assert [m for m in modules if under(m, SERVER_DEPENDENCIES)] == []


def test_the_package_names_still_resolve_on_first_use() -> None:
    """driver_service's public names load lazily, so the client can import the package."""
    statement = (
        "import driver_service, json, sys; driver_service.DriverTracking; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert "driver_service.app.tracking" in loaded_by(statement)
