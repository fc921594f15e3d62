"""The cost of grpcio versions, in turns: `python -m bench.runtime_versions 1.75.0,1.85.4`.

Each version runs the bench's own servers from a virtualenv of its own (this repo's code on
PYTHONPATH), made beforehand outside the repo, e.g. for 1.85.4:

    python3 -m venv /tmp/venv-grpc-1.85.4
    /tmp/venv-grpc-1.85.4/bin/pip install grpcio==1.85.4 grpcio-health-checking==1.85.1 \\
        grpcio-reflection==1.85.1 PyJWT[crypto] cryptography uvloop prometheus-client redis \\
        hiredis asyncpg pytest pytest-asyncio pytest-timeout pytest-xdist hypothesis h2

The generated code needs a grpcio at least as new as the grpcio-tools that made it (and the
protobuf major it was made for): for an older version, put the `src/` of a commit generated
with that version beside its virtualenv, e.g. `git archive 22c8572 src | tar -x -C
/tmp/venv-grpc-1.75.0` (grpcio 1.75.0, protobuf 6); it is used instead of this tree's. The
framing cases of a version: `PYTHONPATH=/tmp/venv-grpc-X/src:. /tmp/venv-grpc-X/bin/pytest
tests/integration/test_framing.py` (or `src:.` for a version that runs this tree's code).
Every round loads each version in turn (the order
rotates between rounds): GetDriver at 100 clients on the bare grpc.aio floor and on the
production server (`full`), then UploadLocations (1 and 50 streams, 100,000 updates) on the
bare floor and on SQLite through the production chain. Compare versions by their ratio to
the first version's figure of the same round: this machine's speed drifts between rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import h2load, server
from bench.ingest import PRODUCTION_INSECURE, one_point
from bench.servers import preload
from bench.unary import GET_DRIVER, GRPC_HEADERS, get_driver_body, verify_grpc

UPDATES = 100_000


def measure(version: str, work: Path, data: Path, tag: str) -> dict[str, Any]:
    """One version's turn: unary floor and ours, ingest floor and ours."""
    venv = Path(f"/tmp/venv-grpc-{version}")
    common.PYTHON = str(venv / "bin" / "python")
    own_src = venv / "src"
    os.environ["PYTHONPATH"] = str(own_src if own_src.is_dir() else common.ROOT / "src")
    row: dict[str, Any] = {"version": version, "load": os.getloadavg()[0]}
    body = get_driver_body()
    for name, kind, args in (("bare", "bare", ()), ("ours", "full", ("--data-dir", str(data)))):
        with server(kind, *args, workdir=work) as srv:
            verify_grpc(srv.port)
            url = f"http://127.0.0.1:{srv.port}{GET_DRIVER}"
            point = h2load(
                url, clients=100, duration_s=3, server_pid=srv.pid, body=body, headers=GRPC_HEADERS
            )
            row[f"unary_{name}_rps"] = point.rps
            row[f"unary_{name}_cpu_us"] = point.cpu_us_per_call
            row[f"unary_{name}_errors"] = point.errors
    for name, kind, extra in (
        ("bare", "bare", []),
        ("sqlite", "chain", ["--interceptors", PRODUCTION_INSECURE]),
    ):
        store = work / f"ingest-{tag}-{name}"
        store.mkdir()
        args = [] if kind == "bare" else ["--data-dir", str(store), *extra]
        with server(kind, *args, workdir=work) as srv:
            for streams in (1, 50):
                point_ = one_point(
                    srv.port,
                    srv.pid,
                    store,
                    "",
                    total=UPDATES,
                    streams=streams,
                    batched=False,
                    workdir=work,
                    stores=kind != "bare",
                )
                row[f"ingest_{name}_{streams}"] = point_["updates_per_s"]
                row[f"ingest_{name}_{streams}_ok"] = (
                    point_["stored"] == point_["updates"] and not point_["failed_streams"]
                )
    return row


def summary(rows: list[dict[str, Any]], reference: str) -> dict[str, dict[str, float]]:
    """Per version: medians over rounds, and unary RPS as a ratio to `reference` in the
    same round."""
    ref = {r["round"]: r for r in rows if r["version"] == reference}
    out: dict[str, dict[str, float]] = {}
    for version in dict.fromkeys(r["version"] for r in rows):
        mine = [r for r in rows if r["version"] == version]
        figures = {
            key: statistics.median(r[key] for r in mine)
            for key in mine[0]
            if key.startswith(("unary_", "ingest_")) and not key.endswith(("_ok", "_errors"))
        }
        for name in ("bare", "ours"):
            key = f"unary_{name}_rps"
            figures[f"{key}_vs_{reference}"] = statistics.median(
                r[key] / ref[r["round"]][key] for r in mine if r["round"] in ref
            )
        out[version] = figures
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_versions", description=__doc__)
    parser.add_argument("versions", help="comma-separated grpcio versions; the first is the base")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "runtime_versions.json")
    args = parser.parse_args(argv)
    versions = args.versions.split(",")
    os.sched_setaffinity(0, {int(common.CLIENT_CORE)})
    result: dict[str, Any] = {"machine": common.machine(), "rounds": args.rounds, "raw": []}
    print(f"load before {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as tmp:
        work = Path(tmp)
        data = work / "unary-data"
        data.mkdir()
        asyncio.run(preload(data))
        for round_ in range(args.rounds):
            shift = round_ % len(versions)
            for version in versions[shift:] + versions[:shift]:
                row = measure(version, work, data, f"{version}-{round_}")
                row["round"] = round_
                result["raw"].append(row)
                print(json.dumps(row), flush=True)
    result["load_after"] = os.getloadavg()
    result["summary"] = summary(result["raw"], versions[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
