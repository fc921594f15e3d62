"""`python -m bench [PART ...]`: run the suite (all parts by default) and write
bench/results/<part>.json, bench/results/unary.png and bench/results/machine.json."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

PARTS = (
    "unary",
    "batch",
    "profile",
    "instructions",
    "ingest",
    "fanout",
    "sessions",
    "nearby",
    "workers",
    "history",
    "zones",
    "http",
    "delivery",
)


def postgres_stores(stack: contextlib.ExitStack, databases: int = 1) -> tuple[tuple[str, ...], str]:
    """A private PostgreSQL with `databases` fresh databases (their URLs), if its adapter has
    landed; else no URL and why not."""
    if not (common.ROOT / "src/driver_service/adapters/postgres/repository.py").exists():
        return (), "adapters/postgres/repository.py not present"
    try:
        from tests.helpers.postgres import PostgresServer, create_database, find_postgres_binaries
    except ImportError as exc:
        return (), f"tests.helpers.postgres unavailable: {exc}"
    if find_postgres_binaries() is None:
        return (), "PostgreSQL binaries missing (Debian: postgresql)"
    pg = PostgresServer.create()
    stack.callback(pg.destroy)
    pg.start()
    return tuple(common.run_async(create_database(pg)) for _ in range(databases)), ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("parts", nargs="*", choices=[*PARTS, []], default=[])
    parser.add_argument("--quick", action="store_true", help="1 repeat, short points (checks)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per unary point")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument(
        "--workers-anyway",
        action="store_true",
        help="run the workers part on fewer than 4 cores (contended; checks that it runs)",
    )
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print(
            f"bench: {common.H2LOAD_MISSING} (apt-get install -y nghttp2-client)", file=sys.stderr
        )
        return 1
    parts = args.parts or list(PARTS)
    repeats = 1 if args.quick else args.repeats
    duration = 1.0 if args.quick else args.duration
    common.RESULTS = args.results
    # This process is a client (fan-out watchers, sessions): keep it off the server's core.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {int(common.CLIENT_CORE)})
    info = common.machine()
    print(f"bench: {info['cpu']}, {info['cores']} cores, load {info['loadavg_before']}")
    started = time.monotonic()
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        for part in parts:
            t0 = time.monotonic()
            print(f"[{part}]")
            result: dict[str, Any]
            if part == "unary":
                from bench import chart, unary

                result = unary.run(work, repeats=repeats, duration_s=duration)
                chart.draw(result, args.results / "unary.png")
            elif part == "batch":
                from bench import unary

                result = unary.batch_lookups(work, repeats=repeats, duration_s=duration)
            elif part == "profile":
                from bench import profile

                result = profile.run(work, repeats=repeats, duration_s=duration, spy=not args.quick)
            elif part == "instructions":
                from bench import instructions

                result = instructions.run(work, repeats=repeats)
            elif part == "ingest":
                from bench import ingest

                # Two databases: ours, and PostgreSQL's durable floor in one of its own.
                stores, why = postgres_stores(stack, 2) if not args.quick else ((), "quick run")
                total = 20_000 if args.quick else 100_000
                result = ingest.run(
                    work, repeats=repeats, total=total, stores=stores[:1], floors=stores[1:]
                )
                result["postgres"] = "measured" if stores else f"skipped: {why}"
            elif part == "fanout":
                from bench import fanout

                result = fanout.run(work, repeats=repeats, rounds=10 if args.quick else 30)
            elif part == "sessions":
                from bench import sessions

                result = sessions.run(
                    work, repeats=repeats, max_sessions=2_000 if args.quick else 10_000
                )
            elif part == "nearby":
                from bench import bench_nearby

                queries = 200 if args.quick else 2_000
                code = bench_nearby.main(["--queries", str(queries)])
                result = {"meets_p99_target": code == 0}
            elif part == "history":
                from bench import history

                stores, why = postgres_stores(stack)
                result = history.run(work, repeats=repeats, stores=stores)
                result["postgres_store"] = "measured" if stores else f"skipped: {why}"
            elif part == "zones":
                from bench import zones

                result = zones.run(
                    work,
                    repeats=repeats,
                    zones=10_000,
                    total=10_000 if args.quick else 50_000,
                    crossings=100 if args.quick else 500,
                )
            elif part == "http":
                from bench import http

                result = http.run(
                    work, repeats=repeats, duration_s=duration, rounds=5 if args.quick else 20
                )
            elif part == "delivery":
                from bench import delivery

                result = delivery.run(
                    work,
                    repeats=repeats,
                    events=1000 if args.quick else 3000,
                    seconds=3.0 if args.quick else 10.0,
                )
            else:
                from bench import workers

                result = workers.run(
                    work, repeats=repeats, duration_s=duration, anyway=args.workers_anyway
                )
            result["seconds"] = time.monotonic() - t0
            common.write_result(part, result)
            summary[part] = result["seconds"]
    info["loadavg_after"] = os.getloadavg()
    info["seconds"] = time.monotonic() - started
    info["argv"] = sys.argv
    common.write_result("machine", info)
    print(f"bench: done in {info['seconds']:.0f} s; results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
