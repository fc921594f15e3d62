"""Every code block tagged `sh runnable` or `python runnable` in README.md and docs/*.md runs
against a server started as `make run` starts it, with its `export` line set, and succeeds:
a documented command cannot rot. Untagged blocks (interactive ones, `serve` itself) are not run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.dev_server import REPO, DevServer

pytestmark = pytest.mark.e2e

FENCE = re.compile(r"^```(\w+) runnable\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Snippet:
    document: Path
    line: int
    language: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.document.name}:{self.line}"


def commands(block: str) -> list[str]:
    """Shell commands of a block: backslash continuations joined, blank lines skipped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def snippets() -> list[Snippet]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Snippet(document, line, match.group(1), match.group(2)))
    return found


SNIPPETS = snippets()


def test_the_marker_is_in_use() -> None:
    """A renamed marker would silently run nothing."""
    assert {s.language for s in SNIPPETS} == {"sh", "python"}
    assert any(s.document.name == "README.md" for s in SNIPPETS)
    assert any(s.document.parent.name == "docs" for s in SNIPPETS)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.id)
def test_documented_block_runs_as_written(dev_server: DevServer, snippet: Snippet) -> None:
    env = dev_server.client_env()
    runs = (
        [[sys.executable, "-c", snippet.text]]
        if snippet.language == "python"
        else [["bash", "-euo", "pipefail", "-c", command] for command in commands(snippet.text)]
    )
    for argv in runs:
        done = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"{snippet.id}: {argv[-1]}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
