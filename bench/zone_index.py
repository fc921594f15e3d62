"""Candidate-zone lookup for one location update: shapely's STRtree (domain/zones.ZoneIndex)
against H3 cells, over the same zones, so the choice in domain/zones.py rests on figures.

    .venv/bin/python -m bench.zone_index [--zones 10000] [--lookups 20000] [--res 8 9]

Zones: a metropolitan area 100 km square; 70 % random star polygons (12-48 vertices, 150 m -
2 km radius), 30 % circles (100 m - 3 km). Lookups: uniformly random points in the area.

strtree   ZoneIndex.candidates(): the STRtree's envelope query (what the domain uses)
h3 res R  each zone's band envelope covered by res-R cells (overlap containment, so no edge
          is missed), a dict cell -> zones; a lookup is latlng_to_cell and one dict probe
+ where   the same lookups followed by Zone.where() on every candidate: the whole cost an
          update pays to learn which zones it is in

misses    the lookups alone for points no zone's band envelope holds (most of a city is in no
          zone): what every update pays even when it produces no event

Per-lookup figures are CPU time over all lookups, median of --repeats runs, one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence

import h3.api.basic_int as h3

from driver_service.domain.zones import Circle, PolygonShape, Zone, ZoneIndex

CENTRE = (52.52, 13.40)
HALF_SIDE_M = 50_000.0
M_PER_DEG = 111_195.0


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (
        lat + north_m / M_PER_DEG,
        lon + east_m / (M_PER_DEG * math.cos(math.radians(lat))),
    )


def random_point(rng: random.Random) -> tuple[float, float]:
    return offset(
        *CENTRE, rng.uniform(-HALF_SIDE_M, HALF_SIDE_M), rng.uniform(-HALF_SIDE_M, HALF_SIDE_M)
    )


def star_polygon(rng: random.Random, lat: float, lon: float, radius_m: float) -> str:
    n = rng.randint(12, 48)
    ring = []
    for k in range(n):
        angle = 2 * math.pi * k / n
        r = radius_m * rng.uniform(0.5, 1.0)
        plat, plon = offset(lat, lon, r * math.sin(angle), r * math.cos(angle))
        ring.append([plon, plat])
    ring.append(ring[0])
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


def make_zones(count: int, rng: random.Random) -> list[Zone]:
    zones = []
    for i in range(count):
        lat, lon = random_point(rng)
        if rng.random() < 0.7:
            shape: Circle | PolygonShape = PolygonShape(
                star_polygon(rng, lat, lon, rng.uniform(150, 2000))
            )
        else:
            shape = Circle(lat, lon, rng.uniform(100, 3000))
        zones.append(Zone(f"z{i}", f"zone {i}", ("bench",), shape, dwell_ns=300 * 10**9))
    return zones


class H3Index:
    """Zones by the res-`res` cells that cover their band envelopes: the disk of cells around
    the envelope's centre that reaches past its corners (h3's own overlap cover of a box,
    h3shape_to_cells_experimental, took ~3.5 ms a zone: 35 s for 10,000)."""

    def __init__(self, zones: Sequence[Zone], res: int) -> None:
        self.res = res
        self.cells: dict[int, list[Zone]] = {}
        spacing_m = h3.average_hexagon_edge_length(res, "m") * math.sqrt(3.0)
        for zone in zones:
            for west, south, east, north in zone.shape.boxes():
                lat, lon = (south + north) / 2, (west + east) / 2
                half_diagonal_m = math.hypot(
                    (north - south) / 2 * M_PER_DEG,
                    (east - west) / 2 * M_PER_DEG * math.cos(math.radians(lat)),
                )
                k = math.ceil(half_diagonal_m / spacing_m) + 2  # + margin for cell distortion
                for cell in h3.grid_disk(h3.latlng_to_cell(lat, lon, res), k):
                    self.cells.setdefault(cell, []).append(zone)

    def candidates(self, latitude: float, longitude: float) -> list[Zone]:
        return self.cells.get(h3.latlng_to_cell(latitude, longitude, self.res), [])


Locator = Callable[[Sequence[tuple[float, float]]], int]


def one_by_one(index: ZoneIndex) -> Locator:
    def run(points: Sequence[tuple[float, float]]) -> int:
        return sum(len(index.locate(lat, lon)) for lat, lon in points)

    return run


def in_groups(index: ZoneIndex, size: int) -> Locator:
    def run(points: Sequence[tuple[float, float]]) -> int:
        found = 0
        for i in range(0, len(points), size):
            group = points[i : i + size]
            lats = [lat for lat, _ in group]
            lons = [lon for _, lon in group]
            found += sum(len(hits) for hits in index.locate_many(lats, lons))
        return found

    return run


def h3_then_where(index: H3Index) -> Locator:
    def run(points: Sequence[tuple[float, float]]) -> int:
        found = 0
        for lat, lon in points:
            for zone in index.candidates(lat, lon):
                if zone.where(lat, lon):
                    found += 1
        return found

    return run


def cpu_us_per_point(locate: Locator, points: Sequence[tuple[float, float]], repeats: int) -> float:
    """Median µs of CPU per point. CPU time, not wall time, so other processes on a shared
    machine disturb the figures less."""
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        locate(points)
        runs.append((time.process_time() - start) / len(points) * 1e6)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--res", type=int, nargs="+", default=[8, 9])
    parser.add_argument("--group", type=int, default=500)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    start = time.perf_counter()
    zones = make_zones(args.zones, rng)
    print(f"{args.zones} zones parsed and prepared in {time.perf_counter() - start:.2f} s")
    points = [random_point(rng) for _ in range(args.lookups)]

    start = time.process_time()
    tree = ZoneIndex(zones)
    tree_build = f"build {(time.process_time() - start) * 1000:.0f} ms"
    rows: list[tuple[str, Locator, str]] = [
        ("strtree 1", one_by_one(tree), tree_build),
        (f"strtree {args.group}", in_groups(tree, args.group), "the same index"),
    ]
    for res in args.res:
        start = time.process_time()
        h3_index = H3Index(zones, res)
        build = (time.process_time() - start) * 1000
        notes = f"build {build:.0f} ms, {len(h3_index.cells)} cells"
        rows.append((f"h3 res {res}", h3_then_where(h3_index), notes))

    misses = [p for p in points if not tree.locate(*p)]
    hits = sum(len(tree.locate(*p)) for p in points) / len(points)
    print(
        f"{len(points) - len(misses)} of {len(points)} points are in some zone's band "
        f"({hits:.2f} zones each on average)"
    )
    print(f"{'index':<12} {'µs/point':>9} {'misses µs':>10}  notes")
    for name, locate, notes in rows:
        all_us = cpu_us_per_point(locate, points, args.repeats)
        miss_us = cpu_us_per_point(locate, misses or points[:1], args.repeats)
        print(f"{name:<12} {all_us:>9.2f} {miss_us:>10.2f}  {notes}")


if __name__ == "__main__":
    main()
