"""The tests' own layout: shared test code lives in `tests/helpers/`, and no module under
tests/, bench/ or scripts/ imports a test module or a conftest (pytest loads conftests; a
test module imported by another runs its module-level code twice and couples two files that
should change alone). Fixtures shared by a tier are registered by that tier's conftest."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
HELPERS = "tests.helpers"
#: What a test tier's folder (and tests/ itself) may hold besides test modules.
TIER_FILES = {"__init__.py", "conftest.py"}


def python_files() -> Iterator[Path]:
    for top in ("tests", "bench", "scripts"):
        yield from sorted((REPO / top).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of `path` (or of `source` as if it lay at `path`):
    relative ones made absolute, `from package import a, b` as package.a and package.b (they
    may be modules), and every string of a `pytest_plugins` assignment (pytest imports them)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if (REPO.joinpath(*module.split("."))).is_dir():  # `from package import module`
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"
            else:
                yield node.lineno, module
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            for value in ast.walk(node.value):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield node.lineno, value.value


def outside_helpers(module: str) -> bool:
    """A module of the tests package other than tests.helpers and its modules."""
    if module == HELPERS or module.startswith(f"{HELPERS}."):
        return False
    return module.startswith("tests.")


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in python_files()
        for line, module in imported_modules(path)
        if outside_helpers(module)
    ]
    assert not wrong, "import shared test code from tests.helpers only:\n" + "\n".join(wrong)


def test_tiers_hold_only_test_modules_and_conftests() -> None:
    """Shared code lying in a tier (or at the top of tests/) is one import away from being
    shared the wrong way: it belongs in tests/helpers/."""
    stray = [
        str(path.relative_to(REPO))
        for path in sorted(TESTS.rglob("*.py"))
        if path.relative_to(TESTS).parts[0] != "helpers"
        and path.name not in TIER_FILES
        and not path.name.startswith("test_")
    ]
    assert not stray, "move shared test code to tests/helpers/:\n" + "\n".join(stray)


def test_the_guard_sees_every_kind_of_import() -> None:
    """The walk above finds absolute, relative, `from package import module` and plugin
    imports, and lets tests.helpers through."""
    source = (
        "import tests.e2e.conftest\n"
        "from tests.unit import strategies\n"
        "from tests import servers\n"
        "from . import test_grpc_api\n"
        "from .conftest import eventually\n"
        "from ..helpers import waiting\n"
        "from tests.helpers.waiting import eventually\n"
        "from tests import helpers\n"
        "pytest_plugins = ['tests.chaos.storm', 'tests.helpers.postgres']\n"
    )
    path = TESTS / "integration" / "test_example.py"
    found = {m for _, m in imported_modules(path, source) if outside_helpers(m)}
    assert found == {
        "tests.e2e.conftest",
        "tests.unit.strategies",
        "tests.servers",
        "tests.integration.test_grpc_api",
        "tests.integration.conftest",
        "tests.chaos.storm",
    }
