"""Zone shapes: GeoJSON validation with messages that say what is wrong, circles measured in
metres, the hysteresis band, and the index checked against each zone's own answer."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driver_service.domain import InvalidInput
from driver_service.domain.zones import (
    MARGIN_M,
    MAX_VERTICES,
    Circle,
    PolygonShape,
    Where,
    Zone,
    ZoneIndex,
    haversine_m,
    zone_columns,
    zone_from_columns,
)

M_PER_DEG = 6_371_008.8 * math.pi / 180.0
LAT0, LON0 = 52.52, 13.40  # Berlin
KX = M_PER_DEG * math.cos(math.radians(LAT0))


def at(east_m: float, north_m: float) -> tuple[float, float]:
    """(lat, lon) this many metres east and north of (LAT0, LON0)."""
    return LAT0 + north_m / M_PER_DEG, LON0 + east_m / KX


def ring(corners_m: list[tuple[float, float]]) -> list[list[float]]:
    """A closed GeoJSON ring from corners in metres (east, north) around (LAT0, LON0)."""
    positions = [[LON0 + e / KX, LAT0 + n / M_PER_DEG] for e, n in corners_m]
    return [*positions, positions[0]]


def square(west: float, south: float, side: float) -> list[list[float]]:
    return ring(
        [(west, south), (west + side, south), (west + side, south + side), (west, south + side)]
    )


def polygon(*rings: list[list[float]]) -> PolygonShape:
    return PolygonShape(json.dumps({"type": "Polygon", "coordinates": list(rings)}))


def invalid(doc: object) -> str:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(InvalidInput) as info:
        PolygonShape(text)
    return str(info.value)


# --- validation ---------------------------------------------------------------------------


def test_a_bow_tie_is_refused_naming_the_crossing() -> None:
    message = invalid(
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    )
    assert "self-intersection at [0.5, 0.5]" in message


def test_an_unclosed_ring_is_refused_showing_both_ends() -> None:
    message = invalid({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]})
    assert "coordinates[0] is not closed" in message
    assert "[0.0, 1.0]" in message
    assert "[0.0, 0.0]" in message


def test_too_many_vertices_are_refused_before_geos_sees_them() -> None:
    n = MAX_VERTICES
    circle = [
        [0.01 * math.cos(2 * math.pi * k / n), 0.01 * math.sin(2 * math.pi * k / n)]
        for k in range(n)
    ]
    message = invalid({"type": "Polygon", "coordinates": [[*circle, circle[0]]]})
    assert f"more than {MAX_VERTICES} positions" in message


def test_just_under_the_vertex_limit_is_accepted() -> None:
    n = MAX_VERTICES - 1
    circle = [
        [0.01 * math.cos(2 * math.pi * k / n), 0.01 * math.sin(2 * math.pi * k / n)]
        for k in range(n - 1)
    ]
    shape = PolygonShape(json.dumps({"type": "Polygon", "coordinates": [[*circle, circle[0]]]}))
    assert shape.vertex_count == n


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ([181, 0], "longitude 181.0 is not between -180 and 180"),
        ([0, 86], "latitude 86.0 is not between -85 and 85"),
        ([0, -90], "latitude -90.0 is not between -85 and 85"),
        (["0", 0], "must hold numbers"),
        ([True, 0], "must hold numbers"),
        ([0], "must be [longitude, latitude]"),
    ],
)
def test_out_of_range_or_malformed_positions_are_named(
    position: list[object], expected: str
) -> None:
    coords = [[[0, 0], [1, 0], position, [0, 1], [0, 0]]]
    message = invalid({"type": "Polygon", "coordinates": coords})
    assert "coordinates[0][2]" in message
    assert expected in message


def test_lat_lon_swapped_gets_a_hint() -> None:
    # Beijing written [latitude, longitude] puts 116.4 where the latitude goes.
    coords = [[[39.9, 116.4], [40.0, 116.4], [40.0, 116.5], [39.9, 116.4]]]
    message = invalid({"type": "Polygon", "coordinates": coords})
    assert "latitude 116.4 is not between -85 and 85" in message
    assert "[longitude, latitude] order" in message


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ({"type": "Point", "coordinates": [0, 0]}, "not 'Point'"),
        ({"type": "Feature", "geometry": {}}, "not a Feature"),
        ({"type": "Polygon", "coordinates": []}, "non-empty list of linear rings"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "at least 4"),
        ({"type": "MultiPolygon", "coordinates": []}, "non-empty list of polygons"),
    ],
)
def test_structural_errors_say_what_is_expected(doc: object, expected: str) -> None:
    assert expected in invalid(doc)


def test_a_hole_outside_its_shell_is_refused() -> None:
    message = invalid(
        {
            "type": "Polygon",
            "coordinates": [square(0, 0, 100), square(500, 500, 10)],
        }
    )
    assert "hole lies outside shell" in message


def test_overlapping_multipolygon_members_are_refused() -> None:
    message = invalid(
        {"type": "MultiPolygon", "coordinates": [[square(0, 0, 100)], [square(50, 50, 100)]]}
    )
    assert "not valid" in message


def test_a_zone_larger_than_the_limit_is_refused_with_its_size() -> None:
    message = invalid(
        {"type": "Polygon", "coordinates": [[[0, 0], [6, 0], [6, 1], [0, 1], [0, 0]]]}
    )
    assert "667 km across" in message


def test_a_zone_across_the_antimeridian_must_be_split() -> None:
    coords = [[[179.9, 0], [-179.9, 0], [-179.9, 0.1], [179.9, 0.1], [179.9, 0]]]
    assert "antimeridian" in invalid({"type": "Polygon", "coordinates": coords})


def test_geojson_is_kept_canonical_and_compares_by_it() -> None:
    a = PolygonShape('{"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,0]]]}')
    b = PolygonShape(
        '{"coordinates": [[[0, 0, 5], [1, 0, 5], [1, 1, 5], [0, 0, 5]]], "type": "Polygon"}'
    )
    assert a == b
    assert (
        a.geojson == '{"type":"Polygon","coordinates":[[[0.0,0.0],[1.0,0.0],[1.0,1.0],[0.0,0.0]]]}'
    )


@pytest.mark.parametrize(
    ("lat", "lon", "radius", "expected"),
    [
        (0, 0, 0, "radius_m must be > 0"),
        (0, 0, 100_001, "at most 100000 m"),
        (0, 0, math.nan, "radius_m"),
        (91, 0, 10, "latitude"),
        (0, -181, 10, "longitude"),
    ],
)
def test_circles_are_validated(lat: float, lon: float, radius: float, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        Circle(lat, lon, radius)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"zone_id": ""}, "zone id is required"),
        ({"zone_id": "a b"}, "may contain only"),
        ({"zone_id": "x" * 65}, "longer than 64"),
        ({"labels": ("ok", "not ok")}, "label 'not ok'"),
        ({"labels": tuple(f"l{i}" for i in range(33))}, "at most 32 labels"),
        ({"dwell_ns": -1}, "dwell"),
        ({"dwell_ns": 8 * 24 * 3600 * 10**9}, "dwell"),
        ({"name": "n" * 201}, "name is longer"),
    ],
)
def test_zone_fields_are_validated(kwargs: dict[str, object], expected: str) -> None:
    fields: dict[str, object] = {
        "zone_id": "z1",
        "name": "Zone",
        "labels": (),
        "shape": Circle(0, 0, 10),
    }
    fields.update(kwargs)
    with pytest.raises(InvalidInput, match=expected):
        Zone(**fields)  # type: ignore[arg-type]


def test_labels_are_kept_sorted_and_unique() -> None:
    zone = Zone("z", "Z", ("surge", "airport", "surge"), Circle(0, 0, 10))
    assert zone.labels == ("airport", "surge")


# --- where a point is ---------------------------------------------------------------------


def test_circle_membership_is_in_metres_not_degrees() -> None:
    # At 60 degrees north a degree of longitude is half a degree of latitude: a circle judged
    # in degrees would hold a point 1.5 km east; in metres it must not.
    circle = Circle(60.0, 10.0, 1000.0)
    east = 10.0 + 1500.0 / (M_PER_DEG * 0.5)
    assert circle.where(60.0, east) is Where.OUTSIDE
    assert circle.where(60.0 + 990 / M_PER_DEG, 10.0) is Where.INSIDE_BAND
    assert circle.where(60.0 + 500 / M_PER_DEG, 10.0) is Where.INSIDE


@pytest.mark.parametrize(
    ("distance_m", "expected"),
    [
        (0.0, Where.INSIDE),
        (1000.0 - MARGIN_M - 1, Where.INSIDE),
        (1000.0 - MARGIN_M + 1, Where.INSIDE_BAND),
        (999.0, Where.INSIDE_BAND),
        (1001.0, Where.OUTSIDE_BAND),
        (1000.0 + MARGIN_M - 1, Where.OUTSIDE_BAND),
        (1000.0 + MARGIN_M + 1, Where.OUTSIDE),
    ],
)
def test_circle_band(distance_m: float, expected: Where) -> None:
    lat, lon = at(0, distance_m)
    assert Circle(LAT0, LON0, 1000.0).where(lat, lon) is expected


@pytest.mark.parametrize(
    ("east_m", "expected"),
    [
        (-40, Where.OUTSIDE),
        (-15, Where.OUTSIDE_BAND),
        (-2, Where.OUTSIDE_BAND),
        (2, Where.INSIDE_BAND),
        (15, Where.INSIDE_BAND),
        (40, Where.INSIDE),
        (500, Where.INSIDE),
        (985, Where.INSIDE_BAND),
        (1010, Where.OUTSIDE_BAND),
        (1100, Where.OUTSIDE),
    ],
)
def test_polygon_band_is_measured_in_metres_across_the_west_edge(
    east_m: float, expected: Where
) -> None:
    zone = polygon(square(0, 0, 1000))
    assert zone.where(*at(east_m, 500)) is expected


def test_a_hole_is_outside_with_its_own_band() -> None:
    zone = polygon(square(0, 0, 1000), square(400, 400, 200))
    assert zone.where(*at(500, 500)) is Where.OUTSIDE  # middle of the hole
    assert zone.where(*at(405, 500)) is Where.OUTSIDE_BAND  # in the hole, near its edge
    assert zone.where(*at(395, 500)) is Where.INSIDE_BAND
    assert zone.where(*at(200, 500)) is Where.INSIDE


def test_multipolygon_members_each_count() -> None:
    shape = PolygonShape(
        json.dumps(
            {"type": "MultiPolygon", "coordinates": [[square(0, 0, 300)], [square(1000, 0, 300)]]}
        )
    )
    assert shape.where(*at(150, 150)) is Where.INSIDE
    assert shape.where(*at(1150, 150)) is Where.INSIDE
    assert shape.where(*at(650, 150)) is Where.OUTSIDE


def test_a_zone_thinner_than_twice_the_margin_has_no_deep_inside() -> None:
    zone = polygon(square(0, 0, 30))
    assert zone.where(*at(15, 15)) is Where.INSIDE_BAND


# --- the index ----------------------------------------------------------------------------


def test_index_finds_circles_across_the_antimeridian_on_both_sides() -> None:
    index = ZoneIndex([Zone("date-line", "", (), Circle(0.0, 179.995, 2000.0))])
    assert index.locate(0.0, 179.999) == {"date-line": Where.INSIDE}
    assert index.locate(0.0, -179.999) == {"date-line": Where.INSIDE}
    assert index.locate(0.0, -179.9) == {}


def test_index_finds_a_circle_around_a_pole_at_any_longitude() -> None:
    index = ZoneIndex([Zone("pole", "", (), Circle(90.0, 0.0, 5000.0))])
    for lon in (-180.0, -90.0, 0.0, 45.0, 180.0):
        assert index.locate(89.99, lon) == {"pole": Where.INSIDE}


def test_with_and_without_zone_leave_the_old_index_unchanged() -> None:
    first = ZoneIndex([Zone("a", "", (), Circle(LAT0, LON0, 100.0))])
    second = first.with_zone(Zone("a", "", (), Circle(LAT0, LON0, 5000.0), version=2))
    third = second.without_zone("a")
    point = at(0, 1000)
    assert first.locate(*point) == {}
    assert second.locate(*point) == {"a": Where.INSIDE}
    assert third.locate(*point) == {}
    assert len(third) == 0
    assert third.without_zone("a") is third


def test_a_zone_id_given_twice_is_a_bug() -> None:
    zone = Zone("a", "", (), Circle(0, 0, 10))
    with pytest.raises(ValueError, match="twice"):
        ZoneIndex([zone, zone])


def _zones_around_berlin() -> ZoneIndex:
    zones = [
        Zone("square", "", (), polygon(square(0, 0, 1000))),
        Zone("holed", "", (), polygon(square(-2000, -2000, 1500), square(-1500, -1500, 500))),
        Zone("circle", "", (), Circle(*at(900, 900), 400.0)),
        Zone("small", "", (), Circle(*at(-300, 300), 25.0)),
        Zone(
            "multi",
            "",
            (),
            PolygonShape(
                json.dumps(
                    {
                        "type": "MultiPolygon",
                        "coordinates": [[square(1500, -500, 400)], [square(2100, -500, 400)]],
                    }
                )
            ),
        ),
    ]
    return ZoneIndex(zones)


ZONES = _zones_around_berlin()
offsets = st.floats(-2500, 3000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(offsets, offsets), min_size=1, max_size=40))
def test_index_agrees_with_every_zone_one_by_one_and_in_bulk(
    points_m: list[tuple[float, float]],
) -> None:
    points = [at(e, n) for e, n in points_m]
    expected = [
        {z.zone_id: z.where(lat, lon) for z in ZONES if z.where(lat, lon) is not Where.OUTSIDE}
        for lat, lon in points
    ]
    assert [ZONES.locate(lat, lon) for lat, lon in points] == expected
    bulk = ZONES.locate_many([lat for lat, _ in points], [lon for _, lon in points])
    assert bulk == expected


def test_locate_many_of_nothing_and_of_an_empty_index() -> None:
    assert ZONES.locate_many([], []) == []
    assert ZoneIndex().locate_many([LAT0], [LON0]) == [{}]
    assert ZoneIndex().locate(LAT0, LON0) == {}


@given(st.floats(0, 20_000), st.floats(0, 360))
def test_haversine_matches_the_offset_it_was_built_from(distance: float, bearing: float) -> None:
    east = distance * math.sin(math.radians(bearing))
    north = distance * math.cos(math.radians(bearing))
    lat, lon = at(east, north)
    # The local flat offset and the sphere agree to well under a metre over 20 km.
    assert haversine_m(LAT0, LON0, lat, lon) == pytest.approx(distance, abs=0.5 + distance * 1e-3)


# --- storage form ------------------------------------------------------------------------------


def test_a_stored_zone_loads_from_its_prepared_form_exactly_as_from_its_geojson() -> None:
    holed = polygon(square(-500, -500, 1000), square(-100, -100, 200))
    thin = polygon(square(0, 0, 30))  # thinner than twice the margin: its inner band is empty
    multi = PolygonShape(
        json.dumps(
            {
                "type": "MultiPolygon",
                "coordinates": [[square(-3000, 0, 500)], [square(3000, 0, 800)]],
            }
        )
    )
    circle = Circle(LAT0, LON0, 300.0)
    zones = [Zone(f"z{i}", "z", (), s) for i, s in enumerate((holed, thin, multi, circle))]
    columns = [zone_columns(zone) for zone in zones]
    assert columns[3][8] is None  # a circle needs no geometry
    from_wkb = [zone_from_columns(*c) for c in columns]
    from_text = [zone_from_columns(*c[:8]) for c in columns]
    unknown = [zone_from_columns(*c[:8], b"WKB9" + (c[8] or b"")) for c in columns]
    assert from_wkb == from_text == unknown == zones
    points = [at(e, n) for e in range(-4000, 4001, 7) for n in (-510, -480, 0, 15, 90, 410)]
    lats, lons = [p[0] for p in points], [p[1] for p in points]
    expected = ZoneIndex(zones).locate_many(lats, lons)
    assert ZoneIndex(from_wkb).locate_many(lats, lons) == expected
    assert ZoneIndex(from_text).locate_many(lats, lons) == expected
    assert ZoneIndex(unknown).locate_many(lats, lons) == expected
    assert any(Where.INSIDE in found.values() for found in expected)
    assert any(Where.INSIDE_BAND in found.values() for found in expected)
