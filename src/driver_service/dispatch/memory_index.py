"""The in-memory spatial index (one process): a latitude/longitude grid whose cells
stay roughly square in metres at every latitude.

Why a grid of our own and not H3: a query needs the cells covering a spherical cap, and for
a grid that is two ranges of integers (rows by latitude, columns by longitude, wrapped at the
antimeridian, every column near a pole) computed with a few float operations; H3 would need a
`grid_disk` sized for the radius plus a cell lookup per point, in a C extension, for the same
candidates. Correctness never depends on the cells: they only choose candidates, and every
candidate is checked with the exact great-circle distance.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence

from driver_service.dispatch.domain.drivers import (
    DEFAULT_FORGET_AFTER_NS,
    IndexedDriver,
    NearbyDriver,
)
from driver_service.dispatch.domain.geo import (
    EARTH_RADIUS_M,
    haversine_m,
    latitude_band,
    longitude_half_width,
)
from driver_service.domain import Driver, Location, Status

#: Cell height in degrees of latitude (~550 m): a 2 km search reads ~80 cells.
DEFAULT_CELL_DEG = 0.005
#: `Status.OFFLINE` read once: on Python 3.11 an enum member read off its class goes through
#: the enum type's `__getattr__` (~80 ns), twice for every update the index follows.
_OFFLINE = Status.OFFLINE


class _Entry:
    __slots__ = ("cell", "driver_id", "lat", "loc_ns", "lon", "seen_ns", "status")

    def __init__(self, driver_id: str, status: Status) -> None:
        self.driver_id = driver_id
        self.status = status
        self.lat = 0.0
        self.lon = 0.0
        self.seen_ns = 0
        self.loc_ns = -1  # no location yet
        self.cell = -1  # not in any cell

    def snapshot(self) -> IndexedDriver:
        return IndexedDriver(self.driver_id, self.status, self.lat, self.lon, self.seen_ns)


class Grid:
    """Rows of `cell_deg` degrees of latitude; each row has as many columns as keep its cells
    about `cell_deg` of latitude wide in metres (so a polar row has a handful)."""

    def __init__(self, cell_deg: float = DEFAULT_CELL_DEG) -> None:
        self.cell_deg = cell_deg
        self.rows = math.ceil(180.0 / cell_deg)
        self.columns: list[int] = []
        for row in range(self.rows):
            south = -90.0 + row * cell_deg
            north = min(90.0, south + cell_deg)
            nearest_equator = 0.0 if south <= 0.0 <= north else min(abs(south), abs(north))
            width = 360.0 * math.cos(math.radians(nearest_equator)) / cell_deg
            self.columns.append(max(1, int(width)))

    def row(self, latitude: float) -> int:
        # Comparisons, not min()/max(): those parse keyword arguments (~0.7k instructions each).
        row = int((latitude + 90.0) / self.cell_deg)
        return row if 0 <= row < self.rows else (0 if row < 0 else self.rows - 1)

    def cell(self, latitude: float, longitude: float) -> int:
        """The cell of a point (every accepted update: `row` inline, a frame less)."""
        row = int((latitude + 90.0) / self.cell_deg)
        if not 0 <= row < self.rows:
            row = 0 if row < 0 else self.rows - 1
        n = self.columns[row]
        return row << 24 | math.floor((longitude + 180.0) / 360.0 * n) % n

    def cover(self, latitude: float, longitude: float, radius_m: float) -> list[int]:
        """Every cell that may hold a point within `radius_m` of the point."""
        south, north, polar = latitude_band(latitude, radius_m)
        half = None if polar else longitude_half_width(latitude, radius_m)
        cells: list[int] = []
        for row in range(self.row(south), self.row(north) + 1):
            n = self.columns[row]
            base = row << 24
            if half is None:
                cells.extend(range(base, base + n))
                continue
            first = math.floor((longitude - half + 180.0) / 360.0 * n)
            last = math.floor((longitude + half + 180.0) / 360.0 * n)
            if last - first + 1 >= n:
                cells.extend(range(base, base + n))
            else:
                cells.extend(base | c % n for c in range(first, last + 1))
        return cells


class MemoryDriverIndex:
    """DriverIndex for one process (the embedded default). Searching costs one dict lookup
    per covering cell plus a few float operations per candidate driver."""

    def __init__(
        self, cell_deg: float = DEFAULT_CELL_DEG, forget_after_ns: int = DEFAULT_FORGET_AFTER_NS
    ) -> None:
        self._grid = Grid(cell_deg)
        self._forget_after_ns = forget_after_ns
        self._entries: dict[str, _Entry] = {}
        self._cells: dict[int, dict[str, _Entry]] = {}
        # Searchable drivers; stale ones (taken out of the cells) in the order they went stale.
        self._live: dict[str, None] = {}
        self._stale: dict[str, int] = {}
        # Drivers that went OFFLINE, by last-seen: a rebuild's older read must not revive them.
        self._gone: dict[str, int] = {}

    # --- updates ---------------------------------------------------------------------------
    async def put(self, drivers: Sequence[Driver]) -> None:
        self._merge(drivers, rebuild=False)

    async def fill(self, drivers: Sequence[Driver]) -> None:
        # One process: the rebuild runs before serving, so nothing races it here today; the
        # rule is Redis's all the same, so a later rebuild while serving would be safe too.
        self._merge(drivers, rebuild=True)

    def _merge(self, drivers: Sequence[Driver], *, rebuild: bool) -> None:
        for driver in drivers:
            entry = self._entries.get(driver.driver_id)
            if entry is None:
                seen = driver.last_seen_at_ns
                if rebuild and (
                    driver.status is _OFFLINE or seen <= self._gone.get(driver.driver_id, -1)
                ):
                    continue
                entry = self._entries[driver.driver_id] = _Entry(driver.driver_id, driver.status)
                self._gone.pop(driver.driver_id, None)  # back (_place notes it if OFFLINE)
            elif not rebuild or driver.last_seen_at_ns > entry.seen_ns:
                entry.status = driver.status
            entry.seen_ns = max(entry.seen_ns, driver.last_seen_at_ns)
            loc = driver.location
            if loc is not None and loc.recorded_at_ns > entry.loc_ns:
                entry.lat, entry.lon, entry.loc_ns = loc.latitude, loc.longitude, loc.recorded_at_ns
            self._place(entry)

    async def move(self, locations: Sequence[Location]) -> list[str]:
        unknown: list[str] = []
        entries = self._entries
        for loc in locations:
            entry = entries.get(loc.driver_id)
            if entry is None:
                unknown.append(loc.driver_id)
                continue
            if loc.recorded_at_ns <= entry.loc_ns:
                continue
            at_ns = loc.recorded_at_ns
            entry.lat, entry.lon, entry.loc_ns = loc.latitude, loc.longitude, at_ns
            entry.seen_ns = max(entry.seen_ns, at_ns)
            self._place(entry)
        return unknown

    def _place(self, entry: _Entry) -> None:
        """Put the entry in the cell of its position, or in none if it is not searchable."""
        offline = entry.status is _OFFLINE
        searchable = not offline and entry.loc_ns >= 0
        cell = self._grid.cell(entry.lat, entry.lon) if searchable else -1
        driver_id = entry.driver_id
        was = entry.cell
        if cell != was:
            cells = self._cells
            if was >= 0:
                old = cells[was]
                del old[driver_id]
                if not old:
                    del cells[was]
            if cell >= 0:
                bucket = cells.get(cell)
                if bucket is None:  # (setdefault would build an empty dict every time)
                    bucket = cells[cell] = {}
                bucket[driver_id] = entry
            entry.cell = cell
        self._live.pop(driver_id, None)
        if self._stale:
            self._stale.pop(driver_id, None)
        if offline:
            # OFFLINE drivers are never offered: nothing of them is kept but when they left.
            del self._entries[driver_id]
            self._gone[driver_id] = entry.seen_ns
            return
        if searchable:
            self._live[driver_id] = None

    # --- queries ---------------------------------------------------------------------------
    async def nearby(
        self,
        latitude: float,
        longitude: float,
        radius_m: float,
        limit: int,
        statuses: Collection[Status],
        seen_after_ns: int,
    ) -> list[NearbyDriver]:
        # Nearest first: search a small disc and widen it only while it holds fewer than
        # `limit` drivers. Exact: every driver outside a disc is farther than all inside.
        wanted = frozenset(statuses)
        reach = radius_m / 16.0
        while True:
            hits = self._scan(latitude, longitude, reach, wanted, seen_after_ns)
            if len(hits) >= limit or reach >= radius_m:
                break
            reach = min(reach * 4.0, radius_m)
        best = heapq.nsmallest(limit, hits) if limit < len(hits) else sorted(hits)
        return [NearbyDriver(entry.snapshot(), distance) for distance, _, entry in best]

    def _scan(
        self,
        latitude: float,
        longitude: float,
        radius_m: float,
        wanted: frozenset[Status],
        seen_after_ns: int,
    ) -> list[tuple[float, str, _Entry]]:
        q_lat = math.radians(latitude)
        q_cos = math.cos(q_lat)
        # Prefilter on the haversine term (no asin/sqrt), slightly loose; hits are then
        # measured with haversine_m itself, so results agree with any exact oracle.
        half = math.sin(radius_m / (2.0 * EARTH_RADIUS_M))
        a_max = half * half * (1.0 + 1e-9) + 1e-18
        radians, sin, cos = math.radians, math.sin, math.cos
        hits: list[tuple[float, str, _Entry]] = []
        cells = self._cells
        for key in self._grid.cover(latitude, longitude, radius_m):
            bucket = cells.get(key)
            if bucket is None:
                continue
            for entry in bucket.values():
                if entry.seen_ns < seen_after_ns or entry.status not in wanted:
                    continue
                p = radians(entry.lat)
                s_lat = sin((p - q_lat) * 0.5)
                s_lon = sin(radians(entry.lon - longitude) * 0.5)
                if s_lat * s_lat + q_cos * cos(p) * s_lon * s_lon > a_max:
                    continue
                distance = haversine_m(latitude, longitude, entry.lat, entry.lon)
                if distance <= radius_m:
                    hits.append((distance, entry.driver_id, entry))
        return hits

    async def get(self, driver_id: str) -> IndexedDriver | None:
        entry = self._entries.get(driver_id)
        return None if entry is None else entry.snapshot()

    # --- housekeeping ----------------------------------------------------------------------
    async def sweep(self, stale_before_ns: int) -> int:
        entries, live, stale = self._entries, self._live, self._stale
        # A full pass (a few ms per 100,000 drivers, every few seconds): event times arrive
        # out of order, so no cheaper order finds every stale driver.
        for driver_id in [
            d for d, e in entries.items() if e.cell >= 0 and e.seen_ns < stale_before_ns
        ]:
            entry = entries[driver_id]
            del live[driver_id]
            bucket = self._cells[entry.cell]
            del bucket[driver_id]
            if not bucket:
                del self._cells[entry.cell]
            entry.cell = -1
            stale[driver_id] = entry.seen_ns
        forget_before = stale_before_ns - self._forget_after_ns
        self._gone = {d: seen for d, seen in self._gone.items() if seen >= forget_before}
        while stale:
            driver_id, seen_ns = next(iter(stale.items()))
            if seen_ns >= forget_before:
                break
            del stale[driver_id]
            del entries[driver_id]
        return len(stale)

    async def forget(self, driver_id: str) -> int:
        """One entry per known driver here (its cell, searchable and stale marks go with it)."""
        entry = self._entries.pop(driver_id, None)
        if entry is not None and entry.cell >= 0:
            bucket = self._cells[entry.cell]
            del bucket[driver_id]
            if not bucket:
                del self._cells[entry.cell]
        self._live.pop(driver_id, None)
        self._stale.pop(driver_id, None)
        gone = self._gone.pop(driver_id, None)
        return int(entry is not None or gone is not None)

    def __len__(self) -> int:
        """Searchable drivers (for tests and the benchmark)."""
        return len(self._live)

    async def close(self) -> None:
        self._entries.clear()
        self._cells.clear()
        self._live.clear()
        self._stale.clear()
        self._gone.clear()
