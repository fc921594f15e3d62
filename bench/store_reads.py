"""GetDriver by store: instructions per call (callgrind) of the production chain on SQLite,
and on PostgreSQL + Redis with the read cache off (every call reads Redis) and on (served
from memory, kept fresh by pub/sub). Same run, same calls, so the ratios compare.

The PostgreSQL and Redis are private ones started here, pinned to the client core (their
work is not the server's; callgrind counts the server process only).

    python -m bench.store_reads [REPEATS [LABEL ...]]     # e.g. 3 sqlite "pg+redis, cache"
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CLIENT_CORE
from bench.instructions import CALLS, WARMUP_CALLS, _load, counted
from bench.servers import preload
from bench.unary import get_driver_body
from bench.workers import _preload, scale_out_stores

#: (label, extra server arguments; "{store}" and "{bus}" are filled in).
VARIANTS: list[tuple[str, list[str]]] = [
    ("sqlite", []),
    ("pg+redis, no cache", ["--store", "{store}", "--bus", "{bus}", "--read-cache-size", "0"]),
    ("pg+redis, cache", ["--store", "{store}", "--bus", "{bus}"]),
]


def run(workdir: Path, repeats: int = 3, labels: list[str] | None = None) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind missing (Debian: valgrind)"}
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    asyncio.run(preload(data))
    body = workdir / "body.bin"
    body.write_bytes(get_driver_body())
    chosen = [(label, extra) for label, extra in VARIANTS if not labels or label in labels]
    runs: dict[str, list[float]] = {label: [] for label, _ in chosen}
    with scale_out_stores(int(CLIENT_CORE)) as (store, bus):
        asyncio.run(_preload(store))
        for _ in range(repeats):  # interleaved: drift of the machine hits every variant
            for label, extra in chosen:
                own = workdir / f"data-{len(list(workdir.iterdir()))}"
                shutil.copytree(data, own, ignore=shutil.ignore_patterns("*.lock"))
                argv = ["chain", "--data-dir", str(own), "--log-level", "WARNING"]
                argv += [a.format(store=store, bus=bus) for a in extra]
                # Every concern on, auth too: the calls carry a token, as served.
                total = counted(
                    argv,
                    workdir,
                    lambda port: _load(port, body, WARMUP_CALLS, token=True),
                    lambda port: _load(port, body, CALLS, token=True),
                )
                runs[label].append(total / CALLS)
                print(f"  {label}: {total / CALLS / 1000:.1f} k instructions per call", flush=True)
    median = {label: sorted(v)[len(v) // 2] for label, v in runs.items()}
    base = median["sqlite"]
    for label, value in median.items():
        versus = 100 * (value / base - 1)
        print(f"  median {label}: {value / 1000:.1f} k, {versus:+.1f} % vs sqlite")
    return {
        "calls": CALLS,
        "repeats": repeats,
        "instructions_per_call": median,
        "runs": runs,
        "vs_sqlite": {k: v / base - 1 for k, v in median.items()},
        "loadavg": os.getloadavg(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the `finally` blocks: the private stores stop


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_term)
    with tempfile.TemporaryDirectory(prefix="bench-store-reads-") as tmp:
        repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
        result = run(Path(tmp), repeats, sys.argv[2:] or None)
        print(json.dumps(result, indent=1))
