"""The public API is pinned: adding or removing an export is a deliberate, reviewed change
(httpx tests/test_exported_members.py)."""

from __future__ import annotations

import types

import pytest

import driver_service
import driver_service.client

EXPECTED: dict[types.ModuleType, list[str]] = {
    driver_service: ["Driver", "DriverTracking", "Location", "ServerSettings", "Status"],
    driver_service.client: [
        "DEFAULT_TARGET",
        "DEFAULT_TIMEOUT_S",
        "DEFAULT_UPLOAD_CHUNK",
        "DEFAULT_UPLOAD_TIMEOUT_S",
        "Backoff",
        "Cancelled",
        "ClientConfigError",
        "ClientSettings",
        "DeadlineExceeded",
        "DriverClient",
        "DriverServiceError",
        "DriverSession",
        "DriverSnapshot",
        "InternalError",
        "InvalidArgument",
        "NotFound",
        "PermissionDenied",
        "ResourceExhausted",
        "SyncDriverClient",
        "Unauthenticated",
        "Unavailable",
        "UploadReport",
        "channel_options",
        "from_rpc_error",
        "utc_from_ns",
    ],
}
MODULES = list(EXPECTED)


def isort_style(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps __all__ in: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_exactly_the_pinned_sorted_list(module: types.ModuleType) -> None:
    exported = module.__all__
    assert exported == EXPECTED[module]
    assert exported == sorted(exported, key=isort_style)
    assert len(set(exported)) == len(exported)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_exported_name_resolves(module: types.ModuleType) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)
    for name in module.__all__:
        assert getattr(module, name) is not None
        assert namespace[name] is getattr(module, name)


def test_client_errors_share_one_base() -> None:
    """Callers can catch every client error with one except clause."""
    client = driver_service.client
    for name in client.__all__:
        member = getattr(client, name)
        if isinstance(member, type) and issubclass(member, Exception):
            assert issubclass(member, client.DriverServiceError), name


def test_version_is_a_string() -> None:
    assert isinstance(driver_service.__version__, str)
    assert driver_service.__version__.count(".") == 2
