"""`make install` is reproducible: every package installed in the environment is pinned in
constraints.txt at the version installed (a dependency added without its pin fails here)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
#: The installer's own tools and the project itself are not constrained.
UNPINNED = {"pip", "setuptools", "wheel", "driver-service"}


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def test_every_installed_package_is_pinned_at_its_installed_version() -> None:
    pins = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[_name(name)] = version
    installed = {
        _name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if _name(dist.metadata["Name"]) not in UNPINNED
    }
    assert {n: v for n, v in installed.items() if pins.get(n) != v} == {}
