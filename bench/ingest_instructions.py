"""Instructions per ingested update, counted by valgrind's callgrind: the bare read-only floor,
our servicer and store without the call pipeline, and the production chain, on SQLite.

The ingest counterpart of `bench/instructions.py` (same method and caveats): one stream of
UPDATES distinct updates (h2load posting a prebuilt body), counted from the first request to
the summary, which our server sends only once every update is durably committed; every
thread counts, so the SQLite writer thread's commit work is in the figure. Compare counts
from the same run.

    python -m bench.ingest_instructions [LABEL ...]     # every variant by default, 3 runs each
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CLIENT_CORE, pinned
from bench.ingest import PRODUCTION_INSECURE, UPLOAD, bodies
from bench.instructions import counted

#: (label, server kind, extra arguments)
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("bare", "bare", []),
    ("sqlite, no pipeline", "chain", ["--interceptors="]),
    ("sqlite, production chain", "chain", [f"--interceptors={PRODUCTION_INSECURE}"]),
]
#: Extra valgrind options (e.g. --separate-threads=yes to split the writer thread off).
EXTRA_VALGRIND: list[str] = []
UPDATES = 5_000
WARMUP_UPDATES = 1_000


def _upload(port: int, body: Path) -> None:
    argv = ["h2load", "-n", "1", "-c", "1", "-d", str(body)]
    argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    argv.append(f"http://127.0.0.1:{port}{UPLOAD}")
    out = subprocess.run(
        pinned(CLIENT_CORE, argv), capture_output=True, text=True, check=False
    ).stdout
    if "1 succeeded" not in out:
        raise RuntimeError(f"h2load: the upload failed:\n{out[-600:]}")


def count(label: str, kind: str, extra: list[str], work: Path) -> float:
    """Instructions per update of one server variant (a fresh server and store)."""
    data = work / f"data-{len(list(work.iterdir()))}"
    data.mkdir()
    base_ns = time.time_ns() - 3_600_000_000_000
    warmup, measured = data / "warmup.bin", data / "body.bin"
    warmup.write_bytes(bodies(WARMUP_UPDATES, 1, False, base_ns)[0])
    measured.write_bytes(bodies(UPDATES, 1, False, base_ns + 10**12)[0])
    server_argv = [kind, *extra] + (["--data-dir", str(data)] if kind != "bare" else [])

    def warm_up(port: int) -> None:
        for attempt in range(5):  # under valgrind a server may listen before it serves
            try:
                _upload(port, warmup)
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(3)
            else:
                return

    total = counted(
        server_argv, work, warm_up, lambda port: _upload(port, measured), EXTRA_VALGRIND
    )
    per_update = total / UPDATES
    print(f"  {label}: {per_update / 1000:.1f} k instructions per update", flush=True)
    return per_update


def run(workdir: Path, labels: list[str] | None = None, repeats: int = 3) -> dict[str, Any]:
    """Each variant `repeats` times; the median counts."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"skipped": "valgrind missing (Debian: valgrind)"}
    work = workdir / "ingest-instructions"
    work.mkdir(parents=True, exist_ok=True)
    chosen = [v for v in VARIANTS if not labels or v[0] in labels]
    runs = {
        label: sorted(count(label, kind, extra, work) for _ in range(repeats))
        for label, kind, extra in chosen
    }
    per_update = {label: counts[len(counts) // 2] for label, counts in runs.items()}
    floor = per_update.get("bare")
    for label, value in per_update.items():
        versus = f", {value / floor:.2f}x the floor" if floor else ""
        print(f"  median {label}: {value / 1000:.1f} k{versus}")
    return {"updates": UPDATES, "repeats": repeats, "instructions_per_update": per_update}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench-ingest-instructions-") as tmp:
        run(Path(tmp), sys.argv[1:] or None)
