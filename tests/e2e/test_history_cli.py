"""History from the command line against a real server: a recorded-style drive is uploaded,
`history` prints it as a table, JSON lines, GeoJSON (read back by `geojson` and `shapely`)
and GPX 1.1 (read back by `gpxpy`) with exactly the uploaded fixes; `trips` finds its two
trips and the stop between them; `forget` refuses without --yes off a terminal, then erases."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import geojson
import gpxpy
import grpc
import pytest
from shapely.geometry import LineString, shape

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from tests.helpers.server_process import Launcher, clean_env
from tests.helpers.synthetic_routes import Route

pytestmark = pytest.mark.e2e

DRIVER = "hist-cab-1"
S = 10**9


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver_service", *args, "--target", target],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / S, UTC).isoformat().replace("+00:00", "Z")


def test_history_trips_and_forget_from_the_command_line(launcher: Launcher, data_dir: Path) -> None:
    server = launcher.start(data_dir)
    start = (time.time_ns() - 3600 * S) // S * S  # whole seconds, an hour ago
    route = Route(driver_id=DRIVER, start_ns=start, seed=3)
    route.drive(600, 10.0, 45.0).park(600, jitter_m=4.0).drive(600, 12.0, 120.0)
    fixes = route.fixes
    with grpc.insecure_channel(server.target) as channel:
        summary = pb_grpc.DriverServiceStub(channel).UploadLocations(
            iter(
                pb.LocationUpdate(
                    driver_id=f.driver_id, latitude=f.latitude, longitude=f.longitude,
                    speed_mps=f.speed_mps, heading_degrees=f.heading_degrees,
                    timestamp=_ts(f.recorded_at_ns),
                )
                for f in fixes
            ),
            timeout=30,
        )  # fmt: skip
    assert summary.persisted_count == len(fixes) == 1801

    # JSON lines: every fix, in order, exactly as uploaded.
    out = cli(server.target, "history", DRIVER, "--since", "2h", "--format", "json")
    assert out.returncode == 0, out.stderr
    points = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(p["time"], p["latitude"], p["longitude"]) for p in points] == [
        (iso(f.recorded_at_ns), f.latitude, f.longitude) for f in fixes
    ]
    # --json alone means the same.
    assert cli(server.target, "history", DRIVER, "--since", "2h", "--json").stdout == out.stdout

    # GPX 1.1, parsed by gpxpy: one track, one segment, every fix with its time.
    out = cli(server.target, "history", DRIVER, "--since", "2h", "--format", "gpx")
    assert out.returncode == 0, out.stderr
    assert 'version="1.1"' in out.stdout
    assert "http://www.topografix.com/GPX/1/1" in out.stdout
    gpx = gpxpy.parse(out.stdout)
    assert gpx.version == "1.1"
    assert len(gpx.tracks) == 1
    assert len(gpx.tracks[0].segments) == 1
    assert gpx.tracks[0].name == DRIVER
    trkpts = gpx.tracks[0].segments[0].points
    assert [(p.latitude, p.longitude, p.time) for p in trkpts] == [
        (f.latitude, f.longitude, datetime.fromtimestamp(f.recorded_at_ns // S, UTC)) for f in fixes
    ]

    # GeoJSON, parsed by geojson and shapely: a Feature with the LineString of every fix.
    out = cli(server.target, "history", DRIVER, "--since", "2h", "--format", "geojson")
    assert out.returncode == 0, out.stderr
    feature = geojson.loads(out.stdout)
    assert isinstance(feature, geojson.Feature)
    assert feature.is_valid, feature.errors()
    # (geojson rounds coordinates to 6 decimals as it reads: shapely reads the exact text.)
    line = shape(json.loads(out.stdout)["geometry"])
    assert isinstance(line, LineString)
    assert list(line.coords) == [(f.longitude, f.latitude) for f in fixes]
    props = feature["properties"]
    assert props["driver_id"] == DRIVER
    assert props["points"] == 1801
    assert props["coordTimes"][0] == iso(fixes[0].recorded_at_ns)

    # Thinned for display: far fewer points, endpoints kept, every point a real fix, and
    # the shape within tolerance (Hausdorff distance, in metres near Berlin).
    out = cli(server.target, "history", DRIVER, "--since", "2h", "--format", "geojson",
              "--simplify", "10m")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert geojson.loads(out.stdout).is_valid
    thin = shape(json.loads(out.stdout)["geometry"])
    assert 3 <= len(thin.coords) < 100
    assert thin.coords[0] == line.coords[0]
    assert thin.coords[-1] == line.coords[-1]
    assert set(thin.coords) <= set(line.coords)
    assert thin.hausdorff_distance(line) * 111_000 < 30  # degrees -> metres, loosely
    out = cli(server.target, "history", DRIVER, "--since", "2h", "--format", "json",
              "--max-points", "20")  # fmt: skip
    assert 2 <= len(out.stdout.splitlines()) <= 20

    # The table: a header and a row a fix.
    out = cli(server.target, "history", DRIVER, "--since", "2h")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0].split()[:3] == ["TIME", "LATITUDE", "LONGITUDE"]
    assert len(rows) == 1802

    # Trips: two drives and the stop between them.
    out = cli(server.target, "trips", DRIVER, "--since", "1d", "--json")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    trips = [r for r in records if r["kind"] == "trip"]
    stops = [r for r in records if r["kind"] == "stop"]
    assert len(trips) == 2, records
    assert 5_400 < trips[0]["distance_m"] < 6_600
    assert 6_500 < trips[1]["distance_m"] < 7_900
    assert any(590 <= s["duration_s"] <= 610 for s in stops), stops
    table = cli(server.target, "trips", DRIVER, "--since", "1d")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].startswith("KIND")
    assert sum(r.startswith("trip") for r in table.stdout.splitlines()) == 2

    # Bad input: a clear error, no traceback.
    bad = cli(server.target, "history", DRIVER, "--since", "yesterday")
    assert bad.returncode == 2
    assert "not a time" in bad.stderr
    unknown = cli(server.target, "history", "nobody-here", "--since", "1h")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr

    # forget: destructive, so off a terminal it needs --yes (and erases nothing without).
    refused = cli(server.target, "forget", DRIVER)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    still = cli(server.target, "history", DRIVER, "--since", "2h", "--json")
    assert len(still.stdout.splitlines()) == 1801
    erased = cli(server.target, "forget", DRIVER, "--yes", "--json")
    assert erased.returncode == 0, erased.stderr
    answer = json.loads(erased.stdout)
    assert answer["history_fixes"] == 1801
    assert answer["driver_records"] == 1
    gone = cli(server.target, "history", DRIVER, "--since", "2h")
    assert gone.returncode == 1
    assert "NOT_FOUND" in gone.stderr


def _ts(ns: int) -> object:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


def test_token_issues_the_history_scopes(tmp_path: Path) -> None:
    """`token issue` signs service tokens with the history scopes (the server's rules
    name them: api/rules.py)."""
    secret = tmp_path / "secret"
    secret.write_text("x" * 40)
    out = subprocess.run(
        [sys.executable, "-m", "driver_service", "token", "issue", "--scope", "history:read",
         "--scope", "drivers:forget", "--secret-file", str(secret)],
        capture_output=True, text=True, timeout=30, env=clean_env(), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    from driver_service.security import TokenValidator

    principal = TokenValidator.from_secret(b"x" * 40).validate(out.stdout.strip())
    assert {"history:read", "drivers:forget"} <= set(principal.scopes)
