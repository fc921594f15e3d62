"""Zones (geofences): validated shapes, where a point is relative to a zone's edge, and the
index that finds the zones a point may be in.

Shapes. A zone is a GeoJSON Polygon or MultiPolygon (RFC 7946, [longitude, latitude]) or a
circle (centre and radius in metres). Polygons are checked by GEOS (shapely) and every failure
names what is wrong and where; circles are measured by great-circle distance, never in degrees.

Hysteresis band. Each zone has a band of `MARGIN_M` metres either side of its edge, and a point
is classified as one of four `Where`s: beyond the band outside, in the band outside, in the band
inside, beyond the band inside. The tracker (events.py) enters a zone only beyond the band
inside (or after settling in the band), and leaves only beyond the band outside (or after
settling there), so GPS jitter along an edge never flaps. For a polygon the band is two GEOS
buffers of +/- `MARGIN_M` made once, when the zone is parsed, in a local equirectangular
projection centred on the zone (metres; zones are at most `MAX_EXTENT_M` across and clear of
the poles, where the projection's scale error across the zone stays within a few per cent of
the margin); all three polygons are prepared, so a lookup costs point-in-polygon tests only.
A circle's band is exact: its radius -/+ the margin, by haversine distance.

Index. `ZoneIndex` finds candidate zones with a shapely STRtree over each zone's band
envelope (boxes in degrees; a circle across the antimeridian gets one box each side), then
classifies only those with prepared geometry (polygons) or haversine (circles);
`locate_many` does a whole commit group in a few vectorised GEOS calls. Chosen over H3 cells
by `python -m bench.zone_index` (10,000 zones in a 100 km square, 20,000 points, 99 % of them
in some zone's band, 4.7 zones each; µs of CPU per point on a busy 2-core machine, so read
the ratios):

    strtree, one point a call          82.7   (54.2 for a point in no zone)  build 109 ms
    strtree, 500 points a call         31.9   (11.4)
    h3 res 8 + Zone.where, one a call 278.4  (145.0)  build 612 ms, 17,922 cells
    h3 res 9 + Zone.where, one a call 136.1   (53.2)  build 1,748 ms, 117,828 cells

An H3 probe alone is fast (~1 µs), but a cover that is cheap to build (a disk of cells around
each envelope) hands back 4-10x more candidates, each needing the exact test; h3's exact
overlap cover took 35 s to build for the 10,000 zones; one resolution fits either big or
small zones, not both; and H3 has no vectorised lookup for a commit group. The STRtree is
exact on envelopes, takes any zone size, rebuilds in ~0.1 s, and needs no extra dependency.

Changes. A `ZoneIndex` is immutable: adding, replacing or deleting a zone builds a new index
(`with_zone`, `without_zone`; shapely's STRtree cannot be changed in place). Zones are already
parsed and prepared, so a rebuild only re-packs the envelopes. The caller swaps the new index
in, and every update evaluated after the swap sees the change: zones take effect for the next
update.

Storage. A store keeps a zone's canonical GeoJSON and, for a polygon, its geometry and band as
WKB (`PolygonShape.to_prepared`), so loading 10,000 zones at start-up reads them back
(`PolygonShape.stored`, exact to the bit) instead of validating and buffering each again:
~0.04 ms a zone instead of ~0.5 ms.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely import MultiPolygon, Polygon, STRtree

from driver_service.domain.errors import InvalidInput

#: Mean Earth radius (IUGG), metres; the same sphere as dispatch's distances.
EARTH_RADIUS_M = 6_371_008.8
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0

#: Half-width of the hysteresis band around every zone's edge. Phone GPS is typically within
#: 5-10 m in the open and 20-30 m between tall buildings; 20 m absorbs most of that jitter
#: without making a 100 m zone unreachable (the tracker's settle time covers the rest).
MARGIN_M = 20.0
#: Positions in one zone's GeoJSON, all rings together: bounds parsing and GEOS work.
MAX_VERTICES = 10_000
#: Largest north-south or east-west size of a polygon zone: a metropolitan area, not a country.
MAX_EXTENT_M = 500_000.0
#: Polygon zones stay between these latitudes, where the local metric projection holds.
MAX_ABS_LATITUDE = 85.0
#: Largest circle radius, as for FindNearbyDrivers.
MAX_RADIUS_M = 100_000.0
#: Largest GeoJSON text accepted, before parsing it (10,000 positions fit in well under 1 MB).
MAX_GEOJSON_BYTES = 1_000_000
MAX_DWELL_NS = 7 * 24 * 3600 * 10**9
MAX_ZONE_ID_LENGTH = 64
MAX_NAME_LENGTH = 200
MAX_LABELS = 32
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
#: Quadrant segments of the band's buffers: few, since the band only needs to be about right.
_QUAD_SEGS = 4
#: An envelope tolerance so float rounding never drops a zone whose edge a point is on.
_EPS_DEG = 1e-9

#: An envelope in degrees: (min longitude, min latitude, max longitude, max latitude).
Box = tuple[float, float, float, float]


class Where(enum.IntEnum):
    """A point relative to a zone's edge and its hysteresis band, outermost first."""

    OUTSIDE = 0  # outside by more than the margin
    OUTSIDE_BAND = 1  # outside, within the margin of the edge
    INSIDE_BAND = 2  # inside (or on the edge), within the margin of the edge
    INSIDE = 3  # inside by more than the margin


#: Where by level (its value): indexing a tuple is much cheaper than calling the enum.
_WHERES: tuple[Where, ...] = tuple(sorted(Where))
#: The same as an array: a whole commit group's levels become `Where`s in one step.
_WHERE_ARRAY: NDArray[np.object_] = np.array(_WHERES, dtype=object)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres; exact at the poles and across the antimeridian."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    s_lat = math.sin((p2 - p1) * 0.5)
    s_lon = math.sin(math.radians(lon2 - lon1) * 0.5)
    a = s_lat * s_lat + math.cos(p1) * math.cos(p2) * s_lon * s_lon
    return 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


@dataclass(frozen=True, slots=True)
class Circle:
    """Every point within `radius_m` (great-circle distance) of the centre."""

    latitude: float
    longitude: float
    radius_m: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latitude) and -90.0 <= self.latitude <= 90.0):
            raise InvalidInput("circle latitude must be a finite number between -90 and 90")
        if not (math.isfinite(self.longitude) and -180.0 <= self.longitude <= 180.0):
            raise InvalidInput("circle longitude must be a finite number between -180 and 180")
        if not (math.isfinite(self.radius_m) and 0.0 < self.radius_m <= MAX_RADIUS_M):
            raise InvalidInput(f"circle radius_m must be > 0 and at most {MAX_RADIUS_M:.0f} m")

    def where(self, latitude: float, longitude: float) -> Where:
        d = haversine_m(self.latitude, self.longitude, latitude, longitude)
        if d <= self.radius_m - MARGIN_M:
            return Where.INSIDE
        if d <= self.radius_m:
            return Where.INSIDE_BAND
        if d <= self.radius_m + MARGIN_M:
            return Where.OUTSIDE_BAND
        return Where.OUTSIDE

    def boxes(self) -> list[Box]:
        """Envelopes of the circle and its band; two when it crosses the antimeridian, every
        longitude when it reaches a pole."""
        dlat = (self.radius_m + MARGIN_M) / _M_PER_DEG + _EPS_DEG
        south = max(-90.0, self.latitude - dlat)
        north = min(90.0, self.latitude + dlat)
        widest = math.cos(math.radians(max(abs(south), abs(north))))
        if widest <= 1e-6 or dlat / widest >= 180.0:
            return [(-180.0, south, 180.0, north)]
        dlon = dlat / widest
        west, east = self.longitude - dlon, self.longitude + dlon
        if west < -180.0:
            return [(-180.0, south, east, north), (west + 360.0, south, 180.0, north)]
        if east > 180.0:
            return [(west, south, 180.0, north), (-180.0, south, east - 360.0, north)]
        return [(west, south, east, north)]


@dataclass(frozen=True, slots=True)
class PolygonShape:
    """A validated GeoJSON Polygon or MultiPolygon with its prepared hysteresis band.

    Construct it from GeoJSON text: ``PolygonShape('{"type": "Polygon", "coordinates": ...}')``.
    `geojson` becomes the canonical text (compact, two dimensions); equality compares it.
    """

    geojson: str
    geometry: Polygon | MultiPolygon = field(init=False, compare=False, repr=False)
    _inner: Polygon | MultiPolygon = field(init=False, compare=False, repr=False)
    _outer: Polygon | MultiPolygon = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kind, coordinates = _parse_geojson(self.geojson)
        geometry = _build(kind, coordinates)
        inner, outer = _band(geometry)
        for geom in (geometry, inner, outer):
            shapely.prepare(geom)
        canonical = json.dumps({"type": kind, "coordinates": coordinates}, separators=(",", ":"))
        object.__setattr__(self, "geojson", canonical)
        object.__setattr__(self, "geometry", geometry)
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_outer", outer)

    @classmethod
    def stored(cls, geojson: str, prepared: bytes | None = None) -> PolygonShape:
        """A shape from the canonical text a store holds, which was validated when the zone
        was written, and the `prepared` form stored beside it (`to_prepared`) if any: the
        same geometry and band as the constructor builds, without checking them again or
        buffering (start-up loads every zone: this is its hot path). Without a usable
        prepared form, the geometry is built from the text and buffered."""
        parts = _unpack_prepared(prepared)
        geometry: Polygon | MultiPolygon
        if parts is not None:
            geometry, inner, outer = parts
        else:
            doc = json.loads(geojson)
            kind, coordinates = doc["type"], doc["coordinates"]
            if kind == "Polygon":
                geometry = Polygon(coordinates[0], coordinates[1:])
            else:
                geometry = MultiPolygon([Polygon(p[0], p[1:]) for p in coordinates])
            inner, outer = _band(geometry)
        shapely.prepare([geometry, inner, outer])
        shape = object.__new__(cls)
        object.__setattr__(shape, "geojson", geojson)
        object.__setattr__(shape, "geometry", geometry)
        object.__setattr__(shape, "_inner", inner)
        object.__setattr__(shape, "_outer", outer)
        return shape

    def to_prepared(self) -> bytes:
        """The geometry and its band as stored beside the GeoJSON: a tag, then each of the
        three as (4-byte big-endian length, WKB). WKB keeps every double exactly, so a
        shape read back (`stored`) classifies every point as this one does."""
        parts = shapely.to_wkb([self.geometry, self._inner, self._outer])
        return _PREPARED_TAG + b"".join(len(p).to_bytes(4, "big") + p for p in parts)

    @property
    def vertex_count(self) -> int:
        return int(shapely.get_num_coordinates(self.geometry))

    def where(self, latitude: float, longitude: float) -> Where:
        if not shapely.intersects_xy(self._outer, longitude, latitude):
            return Where.OUTSIDE
        if not shapely.intersects_xy(self.geometry, longitude, latitude):
            return Where.OUTSIDE_BAND
        if shapely.intersects_xy(self._inner, longitude, latitude):
            return Where.INSIDE
        return Where.INSIDE_BAND

    def boxes(self) -> list[Box]:
        west, south, east, north = (float(v) for v in self._outer.bounds)
        return [(west - _EPS_DEG, south - _EPS_DEG, east + _EPS_DEG, north + _EPS_DEG)]


Shape = Circle | PolygonShape


@dataclass(frozen=True, slots=True)
class Zone:
    """A named zone as stored: labels are kept sorted and unique; `dwell_ns` 0 means no
    zone.dwell events; `version` goes up by one with every update."""

    zone_id: str
    name: str
    labels: tuple[str, ...]
    shape: Shape
    dwell_ns: int = 0
    version: int = 1
    created_at_ns: int = 0
    updated_at_ns: int = 0

    def __post_init__(self) -> None:
        validate_zone_id(self.zone_id)
        if len(self.name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"name is longer than {MAX_NAME_LENGTH} characters")
        labels = tuple(sorted(set(self.labels)))
        if len(labels) > MAX_LABELS:
            raise InvalidInput(f"a zone has at most {MAX_LABELS} labels, not {len(labels)}")
        for label in labels:
            validate_zone_id(label, "label")
        object.__setattr__(self, "labels", labels)
        if not 0 <= self.dwell_ns <= MAX_DWELL_NS:
            raise InvalidInput("dwell must be between 0 and 7 days")
        if self.version < 1:
            raise InvalidInput("version starts at 1")

    def where(self, latitude: float, longitude: float) -> Where:
        return self.shape.where(latitude, longitude)


def validate_zone_id(value: str, field_name: str = "zone id") -> str:
    """Zone ids and labels: 1-64 of letters, digits and . _ : @ -, starting alphanumeric."""
    if not value:
        raise InvalidInput(f"{field_name} is required")
    if len(value) > MAX_ZONE_ID_LENGTH:
        raise InvalidInput(f"{field_name} is longer than {MAX_ZONE_ID_LENGTH} characters")
    if not _ID_RE.match(value):
        shown = value if len(value) <= 32 else value[:32] + "…"
        raise InvalidInput(
            f"{field_name} {shown!r} may contain only letters, digits and . _ : @ - "
            "and must start with a letter or digit"
        )
    return value


# --- GeoJSON parsing: every check names the position it failed at -----------------------------

Ring = list[tuple[float, float]]
PolygonCoords = list[Ring]


def _parse_geojson(text: str) -> tuple[str, list[Any]]:
    """(type, coordinates as plain lists) after the structural checks GEOS cannot make."""
    if len(text.encode()) > MAX_GEOJSON_BYTES:
        raise InvalidInput(f"geojson is larger than {MAX_GEOJSON_BYTES} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidInput(f"geojson is not valid JSON: {error}") from None
    if not isinstance(obj, dict):
        raise InvalidInput("geojson must be a JSON object with type and coordinates")
    kind = obj.get("type")
    if kind in {"Feature", "FeatureCollection", "GeometryCollection"}:
        raise InvalidInput(f"geojson must be a Polygon or MultiPolygon geometry, not a {kind}")
    if kind not in {"Polygon", "MultiPolygon"}:
        raise InvalidInput(f"geojson type must be Polygon or MultiPolygon, not {kind!r}")
    raw = obj.get("coordinates")
    counter = [0]
    if kind == "Polygon":
        coordinates: list[Any] = _polygon(raw, "coordinates", counter)
    else:
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("coordinates of a MultiPolygon must be a non-empty list of polygons")
        coordinates = [_polygon(p, f"coordinates[{i}]", counter) for i, p in enumerate(raw)]
    _check_extent(coordinates if kind == "MultiPolygon" else [coordinates])
    return kind, coordinates


def _polygon(raw: object, where: str, counter: list[int]) -> PolygonCoords:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(f"{where} must be a non-empty list of linear rings")
    return [_ring(ring, f"{where}[{i}]", counter) for i, ring in enumerate(raw)]


def _ring(raw: object, where: str, counter: list[int]) -> Ring:
    if not isinstance(raw, list):
        raise InvalidInput(f"{where} must be a list of positions")
    counter[0] += len(raw)
    if counter[0] > MAX_VERTICES:
        raise InvalidInput(f"geojson has more than {MAX_VERTICES} positions")
    ring = [_position(p, f"{where}[{i}]") for i, p in enumerate(raw)]
    if len(ring) < 4:
        raise InvalidInput(
            f"{where} has {len(ring)} positions; a linear ring needs at least 4 "
            "(3 corners and the first repeated at the end)"
        )
    if ring[0] != ring[-1]:
        raise InvalidInput(
            f"{where} is not closed: its last position {list(ring[-1])} must repeat "
            f"its first {list(ring[0])}"
        )
    return ring


def _position(raw: object, where: str) -> tuple[float, float]:
    if not isinstance(raw, list) or len(raw) not in {2, 3}:
        raise InvalidInput(f"{where} must be [longitude, latitude]")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        raise InvalidInput(f"{where} must hold numbers")
    lon, lat = float(raw[0]), float(raw[1])
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise InvalidInput(f"{where} longitude {lon} is not between -180 and 180")
    if not (math.isfinite(lat) and -MAX_ABS_LATITUDE <= lat <= MAX_ABS_LATITUDE):
        raise InvalidInput(
            f"{where} latitude {lat} is not between -{MAX_ABS_LATITUDE:.0f} and "
            f"{MAX_ABS_LATITUDE:.0f} (is it [longitude, latitude] order?)"
        )
    return lon, lat


def _check_extent(polygons: Sequence[PolygonCoords]) -> None:
    lons = [lon for poly in polygons for lon, _ in poly[0]]
    lats = [lat for poly in polygons for _, lat in poly[0]]
    west, east, south, north = min(lons), max(lons), min(lats), max(lats)
    if east - west > 180.0:
        raise InvalidInput(
            "geojson spans more than 180 degrees of longitude: a zone across the antimeridian "
            "must be split there into a MultiPolygon (RFC 7946 section 3.1.9)"
        )
    widest = 1.0 if south <= 0.0 <= north else math.cos(math.radians(min(abs(south), abs(north))))
    height_m = (north - south) * _M_PER_DEG
    width_m = (east - west) * _M_PER_DEG * widest
    if max(height_m, width_m) > MAX_EXTENT_M:
        raise InvalidInput(
            f"geojson is {max(height_m, width_m) / 1000:.0f} km across; "
            f"a zone may be at most {MAX_EXTENT_M / 1000:.0f} km across"
        )


def _build(kind: str, coordinates: list[Any]) -> Polygon | MultiPolygon:
    """The shapely geometry, which GEOS must find valid (OGC simple features)."""
    geometry: Polygon | MultiPolygon
    if kind == "Polygon":
        geometry = Polygon(coordinates[0], coordinates[1:])
    else:
        geometry = MultiPolygon([Polygon(p[0], p[1:]) for p in coordinates])
    reason = shapely.is_valid_reason(geometry)
    if reason != "Valid Geometry":
        raise InvalidInput(f"geojson {kind} is not valid: {_explain(reason)}")
    if geometry.area <= 0.0:
        raise InvalidInput(f"geojson {kind} has no area")
    return geometry


_REASON_RE = re.compile(r"(?P<what>[^\[]+)\[(?P<x>\S+) (?P<y>\S+)\]")


def _explain(reason: str) -> str:
    """GEOS's 'Self-intersection[1 2]' as 'self-intersection at [longitude 1, latitude 2]'."""
    match = _REASON_RE.fullmatch(reason.strip())
    if match is None:
        return reason
    what = match["what"].strip()
    hint = {
        "Self-intersection": " (edges of a ring cross or touch; a bow-tie ring?)",
        "Ring Self-intersection": " (a ring touches itself)",
        "Hole lies outside shell": " (every inner ring must lie inside the outer ring)",
        "Nested shells": " (MultiPolygon members must not overlap)",
        "Interior is disconnected": " (holes cut the polygon in two)",
        "Too few points": " (repeated positions leave no area)",
    }.get(what, "")
    return f"{what.lower()} at [{match['x']}, {match['y']}]{hint}"


def _band(
    geometry: Polygon | MultiPolygon,
) -> tuple[Polygon | MultiPolygon, Polygon | MultiPolygon]:
    """The geometry shrunk and grown by MARGIN_M, computed in metres around its centre."""
    west, south, east, north = geometry.bounds
    lon0, lat0 = (west + east) / 2.0, (south + north) / 2.0
    kx = _M_PER_DEG * math.cos(math.radians(lat0))

    def forward(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack(((xy[:, 0] - lon0) * kx, (xy[:, 1] - lat0) * _M_PER_DEG))

    def backward(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack((xy[:, 0] / kx + lon0, xy[:, 1] / _M_PER_DEG + lat0))

    metric = shapely.transform(geometry, forward)
    inner = shapely.transform(metric.buffer(-MARGIN_M, quad_segs=_QUAD_SEGS), backward)
    outer = shapely.transform(metric.buffer(MARGIN_M, quad_segs=_QUAD_SEGS), backward)
    return _polygonal(inner), _polygonal(outer)


#: The first bytes of `PolygonShape.to_prepared`; another tag (a later format) is ignored and
#: the shape is built from its GeoJSON instead.
_PREPARED_TAG = b"WKB1"

PolygonParts = tuple[Polygon | MultiPolygon, Polygon | MultiPolygon, Polygon | MultiPolygon]


def _unpack_prepared(prepared: bytes | None) -> PolygonParts | None:
    """(geometry, inner, outer) from `PolygonShape.to_prepared`'s bytes, or None if there are
    none or they are not in this format."""
    if not prepared or not prepared.startswith(_PREPARED_TAG):
        return None
    view = memoryview(prepared)
    at = len(_PREPARED_TAG)
    parts: list[bytes] = []
    while at < len(view):
        size = int.from_bytes(view[at : at + 4], "big")
        parts.append(bytes(view[at + 4 : at + 4 + size]))
        at += 4 + size
    if len(parts) != 3:
        return None
    geometry, inner, outer = (_polygonal(g) for g in shapely.from_wkb(parts))
    return geometry, inner, outer


def _polygonal(geometry: shapely.Geometry) -> Polygon | MultiPolygon:
    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry
    return Polygon()  # a negative buffer of a thin zone can vanish: then nothing is INSIDE


# --- The index ---------------------------------------------------------------------------------

_TOKENS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Located:
    """Where each point of a group is (`ZoneIndex.locate_keyed`).

    ``keys[i]`` stands for point i's map: the same key from the same index means the same
    map (it lists the index's boxes whose band holds the point, each with its level), so a
    caller that remembers a key need not build the map to see that nothing changed.
    ``where(i)`` builds point i's map, as `ZoneIndex.locate` gives it.
    """

    keys: list[bytes]
    zone_ids: list[str]
    wheres: list[Where]
    #: Point i's pairs are zone_ids[bounds[i]:bounds[i + 1]] (and wheres alike).
    bounds: list[int]

    def where(self, i: int) -> dict[str, Where]:
        # A loop over the pairs, as dict(zip(...)) of two slices costs twice as much.
        zone_ids, wheres = self.zone_ids, self.wheres
        found: dict[str, Where] = {}
        for j in range(self.bounds[i], self.bounds[i + 1]):
            found[zone_ids[j]] = wheres[j]
        return found


class ZoneIndex:
    """An immutable set of zones with an STRtree over their band envelopes.

    ``index.locate(lat, lon)`` maps each zone whose band holds the point to its `Where`
    (a zone not in the map is `Where.OUTSIDE`). ``locate_many`` does the same for many points
    in a few vectorised GEOS calls: ~0.5 µs of CPU a point for the envelope query instead of
    ~14 µs one at a time, so a commit group is evaluated at once.
    """

    __slots__ = (
        "_circles",
        "_inner",
        "_is_polygon",
        "_outer",
        "_owner_array",
        "_owners",
        "_raw",
        "_tree",
        "_zones",
        "token",
        "zone_getter",
    )

    def __init__(self, zones: Iterable[Zone] = ()) -> None:
        #: Unique to this index in the process (ids of dead objects are reused; this is not):
        #: what a memo made against it (events.Settled) is checked with.
        self.token: int = next(_TOKENS)
        by_id: dict[str, Zone] = {}
        for zone in zones:
            if zone.zone_id in by_id:
                raise ValueError(f"zone {zone.zone_id!r} is given twice")
            by_id[zone.zone_id] = zone
        self._zones: Mapping[str, Zone] = by_id
        #: `get` without a method call in between: the tracker asks for every zone a
        #: driver is near.
        self.zone_getter: Callable[[str], Zone | None] = by_id.get
        owners: list[str] = []
        boxes: list[Polygon] = []
        polygons: list[tuple[Polygon | MultiPolygon | None, ...]] = []
        circles: list[tuple[float, float, float]] = []
        for zone in by_id.values():
            shape = zone.shape
            for box in shape.boxes():
                owners.append(zone.zone_id)
                boxes.append(shapely.box(*box))
                if isinstance(shape, PolygonShape):
                    polygons.append((shape._outer, shape.geometry, shape._inner))
                    circles.append((math.nan, math.nan, math.nan))
                else:
                    polygons.append((None, None, None))
                    circles.append((shape.latitude, shape.longitude, shape.radius_m))
        self._owners: tuple[str, ...] = tuple(owners)
        self._owner_array: NDArray[np.object_] = np.array(owners, dtype=object)
        self._is_polygon: NDArray[np.bool_] = np.array(
            [outer is not None for outer, _, _ in polygons], dtype=bool
        )
        columns = [np.empty(len(polygons), dtype=object) for _ in range(3)]
        for i, row in enumerate(polygons):
            for column, geometry in zip(columns, row, strict=True):
                column[i] = geometry
        self._outer, self._raw, self._inner = columns
        lat, lon, radius = np.array(circles, dtype=np.float64).reshape(-1, 3).T
        centre = np.radians(lat)
        #: Per box (nan for a polygon's): what `_haversine_np` and the levels need of the
        #: centre and the radius, computed once here instead of for every pair a lookup finds
        #: (the same operations on the same numbers: the same results).
        self._circles: NDArray[np.float64] = np.column_stack(
            (centre, np.cos(centre), lon, radius + MARGIN_M, radius, radius - MARGIN_M)
        )
        self._tree: STRtree | None = STRtree(boxes) if boxes else None

    def __len__(self) -> int:
        return len(self._zones)

    def __iter__(self) -> Iterator[Zone]:
        return iter(self._zones.values())

    def __contains__(self, zone_id: object) -> bool:
        return zone_id in self._zones

    def get(self, zone_id: str) -> Zone | None:
        return self._zones.get(zone_id)

    def locate(self, latitude: float, longitude: float) -> dict[str, Where]:
        """The zones whose band holds the point, each with where the point is."""
        if self._tree is None:
            return {}
        found: dict[str, Where] = {}
        for box in self._tree.query(shapely.Point(longitude, latitude)).tolist():
            zone = self._zones[self._owners[box]]
            where = zone.where(latitude, longitude)
            if where:
                found[zone.zone_id] = where
        return found

    def locate_many(
        self, latitudes: Sequence[float], longitudes: Sequence[float]
    ) -> list[dict[str, Where]]:
        """`locate` for each point, in order."""
        located = self.locate_keyed(latitudes, longitudes)
        return [located.where(i) for i in range(len(located.keys))]

    def locate_keyed(self, latitudes: Sequence[float], longitudes: Sequence[float]) -> Located:
        """`locate_many` as a `Located`: each point's key, and its map built only when asked
        for (most fixes of a driver are where its last one was: comparing keys is enough)."""
        count = len(latitudes)
        if self._tree is None or not count:
            return Located([b""] * count, [], [], [0] * (count + 1))
        xy = np.empty((count, 2), dtype=np.float64)
        xy[:, 0] = longitudes
        xy[:, 1] = latitudes
        lons, lats = xy.T
        point_of, box_of = self._tree.query(shapely.points(xy))
        if point_of.size == 0:
            return Located([b""] * count, [], [], [0] * (count + 1))
        levels = np.zeros(point_of.size, dtype=np.int8)
        polygon = self._is_polygon[box_of]
        if polygon.any():
            # From the band outside inwards, each test only for the pairs inside the last:
            # most candidates (by envelope) are outside the band, and need one test.
            at = np.flatnonzero(polygon)
            for geometries in (self._outer, self._raw, self._inner):
                p = point_of[at]
                at = at[shapely.intersects_xy(geometries[box_of[at]], lons[p], lats[p])]
                levels[at] += 1
                if not at.size:
                    break
        circle = ~polygon
        if circle.any():
            p, b = point_of[circle], box_of[circle]
            centre, cos_centre, centre_lon, outer, radius, inner = self._circles[b].T
            here = np.radians(lats)
            d = _haversine_pairs(centre, cos_centre, centre_lon, here[p], np.cos(here)[p], lons[p])
            levels[circle] = (d <= outer).astype(np.int8) + (d <= radius) + (d <= inner)
        near = levels > 0
        point_near, box_near, level_near = point_of[near], box_of[near], levels[near]
        # One int64 a pair (box, level), each point's pairs in the order the query gave them.
        raw = (box_near.astype(np.int64) * 4 + level_near).tobytes()
        bounds: list[int] = np.searchsorted(point_near, np.arange(count + 1)).tolist()
        return Located(
            [raw[8 * a : 8 * b] for a, b in itertools.pairwise(bounds)],
            self._owner_array[box_near].tolist(),
            _WHERE_ARRAY[level_near].tolist(),
            bounds,
        )

    def with_zone(self, zone: Zone) -> ZoneIndex:
        """A new index with `zone` added, or replacing the zone of the same id."""
        zones = dict(self._zones)
        zones[zone.zone_id] = zone
        return ZoneIndex(zones.values())

    def without_zone(self, zone_id: str) -> ZoneIndex:
        """A new index without the zone `zone_id` (the same index if it has none)."""
        if zone_id not in self._zones:
            return self
        return ZoneIndex(z for z in self._zones.values() if z.zone_id != zone_id)


def _haversine_np(
    lat1: NDArray[np.float64],
    lon1: NDArray[np.float64],
    lat2: NDArray[np.float64],
    lon2: NDArray[np.float64],
) -> NDArray[np.float64]:
    """haversine_m over arrays, the same formula term by term."""
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    return _haversine_pairs(p1, np.cos(p1), lon1, p2, np.cos(p2), lon2)


def _haversine_pairs(
    p1: NDArray[np.float64],
    cos_p1: NDArray[np.float64],
    lon1: NDArray[np.float64],
    p2: NDArray[np.float64],
    cos_p2: NDArray[np.float64],
    lon2: NDArray[np.float64],
) -> NDArray[np.float64]:
    """`_haversine_np` given each latitude in radians and its cosine: a lookup takes a
    circle's from the index and a point's once for all of its pairs."""
    s_lat = np.sin((p2 - p1) * 0.5)
    s_lon = np.sin(np.radians(lon2 - lon1) * 0.5)
    a = s_lat * s_lat + cos_p1 * cos_p2 * s_lon * s_lon
    result: NDArray[np.float64] = 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(1.0, a)))
    return result


# --- Storage form ------------------------------------------------------------------------------


def shape_to_text(shape: Shape) -> str:
    """A shape as stored: the canonical GeoJSON text, or a small JSON object for a circle."""
    if isinstance(shape, Circle):
        return json.dumps(
            {"circle": [shape.latitude, shape.longitude, shape.radius_m]}, separators=(",", ":")
        )
    return shape.geojson


def shape_from_text(text: str, prepared: bytes | None = None) -> Shape:
    """The inverse of `shape_to_text`: a stored shape, validated when it was written, so a
    polygon is rebuilt without validating it again, from its prepared form if the store has
    one (`PolygonShape.stored`)."""
    if text.startswith('{"circle"'):
        lat, lon, radius = json.loads(text)["circle"]
        return Circle(float(lat), float(lon), float(radius))
    return PolygonShape.stored(text, prepared)


def shape_prepared(shape: Shape) -> bytes | None:
    """What a store keeps beside `shape_to_text` so that loading is cheap: a polygon's
    `to_prepared`; nothing for a circle (it needs no geometry)."""
    return shape.to_prepared() if isinstance(shape, PolygonShape) else None


def labels_to_text(labels: Iterable[str]) -> str:
    return json.dumps(list(labels), separators=(",", ":"))


def labels_from_text(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def zone_from_columns(
    zone_id: str,
    name: str,
    labels: str,
    shape: str,
    dwell_ns: int,
    version: int,
    created_at_ns: int,
    updated_at_ns: int,
    prepared: bytes | None = None,
) -> Zone:
    """A stored zone from the columns both stores keep (in this order)."""
    return Zone(
        zone_id,
        name,
        labels_from_text(labels),
        shape_from_text(shape, prepared),
        dwell_ns,
        version,
        created_at_ns,
        updated_at_ns,
    )


def zone_columns(zone: Zone) -> tuple[str, str, str, str, int, int, int, int, bytes | None]:
    """The inverse of `zone_from_columns`."""
    return (
        zone.zone_id,
        zone.name,
        labels_to_text(zone.labels),
        shape_to_text(zone.shape),
        zone.dwell_ns,
        zone.version,
        zone.created_at_ns,
        zone.updated_at_ns,
        shape_prepared(zone.shape),
    )
