"""Instructions per ingested update, counted by valgrind's callgrind: the bare read-only floor,
our servicer and store without the call pipeline, and the production chain, on SQLite and on
PostgreSQL (a private cluster, a fresh database per server; skipped without its binaries).

The ingest counterpart of `bench/instructions.py` (same method and caveats): one stream of
UPDATES distinct updates (h2load posting a prebuilt body), counted from the first request to
the summary, which our server sends only once every update is durably committed; every
thread counts, so the SQLite writer thread's commit work is in the figure. Compare counts
from the same run. Each count is also split by thread (callgrind's
`--separate-threads=yes`): the event loop (thread 1), the busiest other thread (SQLite's
writer thread; on PostgreSQL grpc's poller) and the rest. On PostgreSQL the database server's
own work is another process's and not counted: the figure is this service's share.

With `--streams N` the same UPDATES go in N parallel streams (one h2load each, all at
once): what grows with streams (wake-ups, commit groups, per-stream bookkeeping) shows as
the difference from one stream.

    python -m bench.ingest_instructions [--streams N] [LABEL ...]   # every variant, 3 runs each
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import CLIENT_CORE, DRIVERS, pinned, run_async
from bench.ingest import PRODUCTION_INSECURE, UPLOAD, bodies
from bench.instructions import counted

#: (label, server kind, extra arguments)
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("bare", "bare", []),
    ("sqlite, no pipeline", "chain", ["--interceptors="]),
    ("sqlite, production chain", "chain", [f"--interceptors={PRODUCTION_INSECURE}"]),
    ("postgres, production chain", "chain", [f"--interceptors={PRODUCTION_INSECURE}"]),
]
POSTGRES = "postgres, production chain"
#: Extra valgrind options (each count is split by thread).
EXTRA_VALGRIND: list[str] = ["--separate-threads=yes"]
UPDATES = 5_000
WARMUP_UPDATES = 1_000


def _upload(port: int, *body: Path) -> None:
    """One stream per body, all at once (one h2load each)."""
    procs = []
    for path in body:
        argv = ["h2load", "-n", "1", "-c", "1", "-d", str(path)]
        argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        argv.append(f"http://127.0.0.1:{port}{UPLOAD}")
        procs.append(subprocess.Popen(pinned(CLIENT_CORE, argv), stdout=subprocess.PIPE, text=True))
    outs = [proc.communicate()[0] for proc in procs]
    for out in outs:
        if "1 succeeded" not in out:
            raise RuntimeError(f"h2load: the upload failed:\n{out[-600:]}")


def count(
    label: str,
    kind: str,
    extra: list[str],
    work: Path,
    store: str = "",
    streams: int = 1,
    warmup_updates: int = WARMUP_UPDATES,
) -> tuple[float, dict[str, float]]:
    """Instructions per update of one server variant (a fresh server and store, `store` a
    PostgreSQL URL or SQLite in the data directory), UPDATES in `streams` parallel streams,
    and per update by thread."""
    data = work / f"data-{len(list(work.iterdir()))}"
    data.mkdir()
    base_ns = time.time_ns() - 3_600_000_000_000
    warmup = data / "warmup.bin"
    warmup.write_bytes(bodies(warmup_updates, 1, False, base_ns)[0])
    measured = [data / f"body-{n}.bin" for n in range(streams)]
    for path, body in zip(measured, bodies(UPDATES, streams, False, base_ns + 10**12), strict=True):
        path.write_bytes(body)
    server_argv = [kind, *extra] + (["--data-dir", str(data)] if kind != "bare" else [])
    server_argv += ["--store", store] if store else []

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

    threads: dict[int, int] = {}
    total = counted(
        server_argv, work, warm_up, lambda port: _upload(port, *measured), EXTRA_VALGRIND, threads
    )
    per_update = total / UPDATES
    split = by_thread(threads)
    shown = ", ".join(f"{name} {value / 1000:.1f} k" for name, value in split.items())
    print(f"  {label}: {per_update / 1000:.1f} k instructions per update ({shown})", flush=True)
    return per_update, split


def by_thread(threads: dict[int, int]) -> dict[str, float]:
    """Per update: the event loop (thread 1), the busiest other thread, all the others."""
    loop = threads.get(1, 0)
    others = sorted((n for t, n in threads.items() if t != 1), reverse=True)
    return {
        "loop": loop / UPDATES,
        "busiest other thread": (others[0] if others else 0) / UPDATES,
        "rest": sum(others[1:]) / UPDATES,
    }


def private_postgres(stack: contextlib.ExitStack) -> Callable[[], str] | None:
    """A private PostgreSQL cluster for this run (thrown away at the end), as a maker of
    fresh databases' URLs; None without PostgreSQL's binaries."""
    try:
        from tests.helpers.postgres import PostgresServer, create_database, find_postgres_binaries
    except ImportError:
        return None
    if find_postgres_binaries() is None:
        return None
    pg = PostgresServer.create()
    stack.callback(pg.destroy)
    pg.start()
    return lambda: str(run_async(create_database(pg)))


def run(
    workdir: Path,
    labels: list[str] | None = None,
    repeats: int = 3,
    streams: int = 1,
    warmup_updates: int = WARMUP_UPDATES,
) -> dict[str, Any]:
    """Each variant `repeats` times; the median counts."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"skipped": "valgrind missing (Debian: valgrind)"}
    work = workdir / "ingest-instructions"
    work.mkdir(parents=True, exist_ok=True)
    chosen = [v for v in VARIANTS if not labels or v[0] in labels]
    with contextlib.ExitStack() as stack:
        databases = private_postgres(stack) if any(v[0] == POSTGRES for v in chosen) else None
        if databases is None:
            chosen = [v for v in chosen if v[0] != POSTGRES]

        def store(label: str) -> str:
            return databases() if databases is not None and label == POSTGRES else ""

        runs = {
            label: sorted(
                (
                    count(label, kind, extra, work, store(label), streams, warmup_updates)
                    for _ in range(repeats)
                ),
                key=lambda counted_: counted_[0],
            )
            for label, kind, extra in chosen
        }
    median = {label: counts[len(counts) // 2] for label, counts in runs.items()}
    per_update = {label: value for label, (value, _) in median.items()}
    floor = per_update.get("bare")
    for label, (value, split) in median.items():
        versus = f", {value / floor:.2f}x the floor" if floor else ""
        shown = ", ".join(f"{name} {v / 1000:.1f} k" for name, v in split.items())
        print(f"  median {label}: {value / 1000:.1f} k{versus} ({shown})")
    return {
        "updates": UPDATES,
        "streams": streams,
        "warmup_updates": warmup_updates,
        "repeats": repeats,
        "instructions_per_update": per_update,
        "by_thread": {label: split for label, (_, split) in median.items()},
        "postgres": "measured" if any(v[0] == POSTGRES for v in chosen) else "skipped",
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1, help="parallel streams (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=WARMUP_UPDATES,
        help=f"updates before the count, twice (default {WARMUP_UPDATES}; {DRIVERS:,}: every"
        " driver known, so the count is of drivers moving on, not of first fixes)",
    )
    parser.add_argument("labels", nargs="*", help="variants (default: all)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-instructions-") as tmp:
        run(Path(tmp), args.labels or None, args.repeats, args.streams, args.warmup)


if __name__ == "__main__":
    main(sys.argv[1:])
