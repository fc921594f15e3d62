"""The zone evaluator alone, as a store's writer thread runs it: `ZoneEvaluator.on_locations`
over commit groups of a fixed size, then the tracker states that changed written as JSON and
the events' bodies, per update. No gRPC, no SQL: the part of the whole update that zones
add, counted without the rest's noise.

    python -m bench.zone_evaluator [--workload driving|teleporting] [--zones 10000]
                                   [--total 5000] [--group 64] [--instructions]
                                   [--part evaluator|lookup|floor]

--part lookup counts only the index lookup (`ZoneIndex.locate_keyed` a group); --part floor
the least any lookup with the STRtree and prepared GEOS tests does (the tree query, the
polygons' tests band by band, the circles' haversine, no result built): against a whole
update's cost, the share of it that no evaluator built on them can go below.

Without --instructions: CPU µs per update (three runs). With it: the same in a child under
callgrind, instrumented only while the updates are evaluated (building the zones is not
counted), instructions per update. Both run with the heap settled as `serve` settles it once
it has started (server/heap.py: start-up's objects frozen, young collections every 50,000
allocations), not with the collector's defaults, which made its full collections land in
the counted window or not depending on how much garbage building the zones left.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from bench.common import FIXED_HASHES, PYTHON, ROOT
from bench.ingest import update
from bench.zone_index import make_zones
from bench.zones import S, driving
from driver_service.app.evaluation import ZoneEvaluator
from driver_service.domain import Location
from driver_service.domain.events import TrackerState, event_bodies, stored_alike
from driver_service.domain.zones import _haversine_pairs
from driver_service.server.heap import settle_heap
from driver_service.wire import pb_to_location


def evaluator(zones: int) -> ZoneEvaluator:
    chosen = make_zones(zones, random.Random(7)) if zones else []
    built = ZoneEvaluator()
    built.load_zones(1, {z.zone_id: z.version for z in chosen}, chosen)
    return built


def locations(workload: str, total: int) -> list[Location]:
    base = 1_700_000_000 * S
    drivers = max(1, total // 100)
    if workload == "driving":
        return [pb_to_location(driving(i, base, drivers)) for i in range(total)]
    return [pb_to_location(update(i, base)) for i in range(total)]


def evaluate(built: ZoneEvaluator, fixes: list[Location], group: int) -> int:
    """Every fix through the evaluator, `group` a call, as a store's commit does; the
    number of events."""
    trackers: dict[str, TrackerState] = {}
    logged = 0
    for i in range(0, len(fixes), group):
        states, events = built.on_locations(trackers, fixes[i : i + group])
        for driver_id, state in states.items():
            if not stored_alike(trackers.get(driver_id), state):
                state.to_json()
        event_bodies(events)
        logged += len(events)
        trackers.update(states)
    return logged


def lookups(built: ZoneEvaluator, fixes: list[Location], group: int) -> int:
    """Only the index lookup of every fix, `group` a call; the pairs found."""
    index = built.index
    found = 0
    for i in range(0, len(fixes), group):
        chunk = fixes[i : i + group]
        located = index.locate_keyed([f.latitude for f in chunk], [f.longitude for f in chunk])
        found += len(located.zone_ids)
    return found


def lookup_floor(built: ZoneEvaluator, fixes: list[Location], group: int) -> int:
    """The least a lookup over the STRtree and prepared GEOS does, `group` fixes a call:
    the tree query, each polygon candidate tested band by band (outer, edge, inner) while
    inside, each circle candidate's haversine distance; nothing built from the result.
    The pairs whose outer band holds the point."""
    index = built.index
    tree = index._tree  # the index's own arrays: the same work, nothing more
    if tree is None:
        return 0
    is_polygon = index._is_polygon
    bands = (index._outer, index._raw, index._inner)
    circles = index._circles
    found = 0
    for i in range(0, len(fixes), group):
        chunk = fixes[i : i + group]
        xy = np.empty((len(chunk), 2), dtype=np.float64)
        xy[:, 0] = [f.longitude for f in chunk]
        xy[:, 1] = [f.latitude for f in chunk]
        lons, lats = xy.T
        point_of, box_of = tree.query(shapely.points(xy))
        polygon = is_polygon[box_of]
        at = np.flatnonzero(polygon)
        for band, geometries in enumerate(bands):
            p = point_of[at]
            at = at[shapely.intersects_xy(geometries[box_of[at]], lons[p], lats[p])]
            if band == 0:
                found += at.size
            if not at.size:
                break
        circle = ~polygon
        p, b = point_of[circle], box_of[circle]
        centre, cos_centre, centre_lon, outer, _, _ = circles[b].T
        here = np.radians(lats)
        d = _haversine_pairs(centre, cos_centre, centre_lon, here[p], np.cos(here)[p], lons[p])
        found += int((d <= outer).sum())
    return found


PARTS = {"evaluator": evaluate, "lookup": lookups, "floor": lookup_floor}


def _callgrind(on: bool) -> None:
    switch = ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())]
    subprocess.run(switch, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zone_evaluator", description=__doc__)
    parser.add_argument("--workload", choices=("driving", "teleporting"), default="driving")
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--total", type=int, default=5_000)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--part", choices=tuple(PARTS), default="evaluator")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--counted-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    fixes = locations(args.workload, args.total)
    if args.counted_child:
        built = evaluator(args.zones)
        settle_heap()
        _callgrind(True)
        logged = PARTS[args.part](built, fixes, args.group)
        _callgrind(False)
        print(logged)
        return 0
    if args.instructions:
        if shutil.which("valgrind") is None:
            print("valgrind missing (Debian: valgrind)")
            return 1
        with tempfile.TemporaryDirectory(prefix="bench-zone-evaluator-") as tmp:
            dump = Path(tmp) / "callgrind.out"
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
            argv += [f"--callgrind-out-file={dump}", PYTHON, "-m", "bench.zone_evaluator"]
            argv += ["--counted-child", "--workload", args.workload, "--zones", str(args.zones)]
            argv += ["--total", str(args.total), "--group", str(args.group), "--part", args.part]
            out = subprocess.run(
                argv, cwd=ROOT, env=FIXED_HASHES, check=True, capture_output=True, text=True
            )
            totals = [ln for ln in dump.read_text().splitlines() if ln.startswith("totals:")]
            per_update = int(totals[0].split()[1]) / args.total
        counted = "events" if args.part == "evaluator" else "pairs"
        print(f"{per_update:.0f} instructions per update, {out.stdout.strip()} {counted}")
        return 0
    for _ in range(3):
        built = evaluator(args.zones)
        settle_heap()
        t0 = time.process_time()
        logged = PARTS[args.part](built, fixes, args.group)
        cpu = time.process_time() - t0
        print(f"{cpu / args.total * 1e6:.2f} µs per update, {logged}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
