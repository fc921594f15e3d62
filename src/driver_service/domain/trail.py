"""Thinning a trail for display while keeping its shape: Douglas-Peucker in metres, a point cap.

Library: shapely (`LineString.simplify(preserve_topology=False)` is GEOS's Douglas-Peucker),
rather than the `simplification` package or hand-written geometry: GEOS is the geometry
engine of PostGIS and QGIS, maintained by OSGeo, with wheels for every platform we run;
shapely has typed stubs for mypy --strict and numpy-vectorised coordinates; and the same
library checks the GeoJSON outputs in the tests. `preserve_topology=False` is plain
Douglas-Peucker: a trail may cross itself (a driver circling a block), so the topology-
preserving variant would keep points for a constraint that does not apply.

Metres, not degrees: fixes are projected onto a local plane first (equirectangular around
the trail's mean latitude, longitudes unwrapped across the antimeridian), where a tolerance
in metres means the same east-west as north-south. The plane's scale error grows with the
trail's north-south extent (about 0.2 % over 100 km at mid latitudes), well below the
tolerances a map needs.

Chunked and streamed use: Douglas-Peucker is global (whether a fix is kept depends on fixes
far from it), so `thin_trail` takes the whole range. Its memory is bounded by the range:
the service caps a range's span, and a driver-day (86,400 fixes) is a few MB. A point cap
needs that global pass (its tolerance depends on the whole trail). Without a cap,
`TrailThinner` thins windows of `window` fixes as they stream from the store, each window
sharing its boundary fix with the next: memory stays O(window) and the tolerance still
holds for the whole trail (each dropped fix is within tolerance of its window's thinned
line, which is part of the whole), at the price of keeping each window's boundary fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import shapely

from driver_service.domain.errors import InvalidInput
from driver_service.domain.geo import EARTH_RADIUS_M
from driver_service.domain.model import Location

#: Tolerances above this (metres) cannot show anything a map needs.
MAX_TOLERANCE_M = 100_000.0
#: Raising the tolerance to meet a cap: doublings at most (1 m * 2**40 is beyond any trail).
_MAX_DOUBLINGS = 40
#: ... then this many bisection steps toward the cap, so the answer uses it rather than
#: landing anywhere between half the cap and the cap.
_BISECTIONS = 8


def validate_thinning(tolerance_m: float, max_points: int | None) -> None:
    """Raise InvalidInput for a tolerance or cap that cannot be honoured."""
    if not (math.isfinite(tolerance_m) and 0.0 <= tolerance_m <= MAX_TOLERANCE_M):
        raise InvalidInput(f"simplify tolerance must be between 0 and {MAX_TOLERANCE_M:g} m")
    if max_points is not None and max_points < 2:
        raise InvalidInput("max_points must be at least 2 (a trail keeps its first and last fix)")


def thin_trail(
    fixes: Sequence[Location], tolerance_m: float = 0.0, max_points: int | None = None
) -> list[Location]:
    """The fixes (a subsequence, in order, first and last always kept) that draw the trail
    within `tolerance_m` metres. With `max_points`, if that is still too many, the
    tolerance is raised (doubled, then bisected) until the trail fits: the cap is met by
    dropping the least telling detail first, never by sampling blindly."""
    validate_thinning(tolerance_m, max_points)
    count = len(fixes)
    if count <= 2 or (tolerance_m == 0.0 and (max_points is None or count <= max_points)):
        return list(fixes)
    xy = project(fixes)
    kept = _douglas_peucker(xy, tolerance_m) if tolerance_m > 0.0 else list(range(count))
    if max_points is not None and len(kept) > max_points:
        kept = _fit_cap(xy, max(tolerance_m, 1.0), max_points)
    return [fixes[i] for i in kept]


class TrailThinner:
    """Douglas-Peucker over a stream in windows of `window` fixes (no point cap): `add`
    returns the fixes that are final so far, `finish` the rest. Memory is O(window)."""

    __slots__ = ("_buffer", "_tolerance_m", "_window")

    def __init__(self, tolerance_m: float, window: int = 10_000) -> None:
        validate_thinning(tolerance_m, None)
        if window < 3:
            raise ValueError("window must hold at least 3 fixes")
        self._tolerance_m = tolerance_m
        self._window = window
        self._buffer: list[Location] = []

    def add(self, fixes: Sequence[Location]) -> list[Location]:
        out: list[Location] = []
        buffer = self._buffer
        for fix in fixes:
            buffer.append(fix)
            if len(buffer) >= self._window:
                kept = thin_trail(buffer, self._tolerance_m)
                out.extend(kept[:-1])  # the boundary fix opens the next window
                self._buffer = buffer = [kept[-1]]
        return out

    def finish(self) -> list[Location]:
        kept = thin_trail(self._buffer, self._tolerance_m)
        self._buffer = []
        return kept


def project(fixes: Sequence[Location]) -> npt.NDArray[np.float64]:
    """Fixes as (x, y) metres on the local equirectangular plane of their mean latitude."""
    lat = np.radians(np.fromiter((f.latitude for f in fixes), np.float64, len(fixes)))
    lon = np.unwrap(np.radians(np.fromiter((f.longitude for f in fixes), np.float64, len(fixes))))
    scale = math.cos(float(lat.mean()))
    return np.column_stack((EARTH_RADIUS_M * scale * lon, EARTH_RADIUS_M * lat))


def _simplified(xy: npt.NDArray[np.float64], tolerance_m: float) -> npt.NDArray[np.float64]:
    line = shapely.LineString(xy)
    return shapely.get_coordinates(line.simplify(tolerance_m, preserve_topology=False))


def _douglas_peucker(xy: npt.NDArray[np.float64], tolerance_m: float) -> list[int]:
    """Indices of the vertices GEOS keeps, first and last included."""
    return _indices(xy, _simplified(xy, tolerance_m))


def _indices(xy: npt.NDArray[np.float64], simplified: npt.NDArray[np.float64]) -> list[int]:
    """Where the simplified vertices are in the input. GEOS returns a subsequence of the
    input vertices: match them in order (a parked car repeats coordinates, so a lookup by
    value alone could pick the wrong fix); numpy finds the candidates."""
    points = xy[:, 0] + 1j * xy[:, 1]
    wanted = (simplified[:, 0] + 1j * simplified[:, 1]).tolist()
    last = len(xy) - 1
    kept = [0]
    k = 1  # the first simplified vertex is the first fix
    for i in np.flatnonzero(np.isin(points, wanted)).tolist():
        if k >= len(wanted) - 1:
            break
        if 0 < i < last and points[i] == wanted[k]:
            kept.append(i)
            k += 1
    kept.append(last)
    return kept


def _fit_cap(xy: npt.NDArray[np.float64], tolerance_m: float, max_points: int) -> list[int]:
    """Raise the tolerance until at most max_points vertices remain: double, then bisect
    (counting vertices only; the indices are matched once, for the answer)."""
    low, high = tolerance_m, tolerance_m
    best = _simplified(xy, high)
    for _ in range(_MAX_DOUBLINGS):
        if len(best) <= max_points:
            break
        low, high = high, high * 2.0
        best = _simplified(xy, high)
    else:
        return [0, len(xy) - 1]
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2.0
        candidate = _simplified(xy, middle)
        if len(candidate) <= max_points:
            best, high = candidate, middle
        else:
            low = middle
    return _indices(xy, best)
