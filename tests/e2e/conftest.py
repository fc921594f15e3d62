"""The e2e tier's fixtures: `driver-service serve` subprocesses (tests.helpers.server_process),
killed at teardown, and `make run`'s development server (tests.helpers.dev_server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dev_server import DevServer, start_dev_server, stop_dev_server
from tests.helpers.server_process import Launcher


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        launch.kill_all()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """`make run`'s server, one per test module that asks for it."""
    server = start_dev_server(tmp_path_factory.mktemp("make-run"))
    try:
        yield server
    finally:
        stop_dev_server(server)
