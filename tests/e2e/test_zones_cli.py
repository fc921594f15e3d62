"""Zones and events from the command line against a real server with token auth: a token
with the `zones` and `events` scopes from `token issue`, `zones create|list|get|update|delete`
(a circle and GeoJSON from stdin), a driver crossing a zone (uploaded with `upload --file`),
then `events` replaying the log (text and --json) and `events --follow` seeing a new one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers.server_process import Launcher, clean_env

pytestmark = pytest.mark.e2e

SQUARE = (
    '{"type":"Polygon","coordinates":[[[13.39,52.51],[13.41,52.51],[13.41,52.53],'
    "[13.39,52.53],[13.39,52.51]]]}"
)


def run(*args: str, stdin: str | None = None, token: str = "") -> subprocess.CompletedProcess[str]:
    env = clean_env({"DRIVER_SERVICE_TOKEN": token} if token else None)
    return subprocess.run(
        [sys.executable, "-m", "driver_service", *args], input=stdin,
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fixes_csv(path: Path, driver: str, lats: list[float], start_s: float) -> Path:
    """One fix a second at longitude 13.40, the first `start_s` seconds ago."""
    lines = ["driver_id,latitude,longitude,speed_mps,heading_degrees,timestamp"]
    t0 = time.time() - start_s
    for i, lat in enumerate(lats):
        at = datetime.fromtimestamp(t0 + i, UTC).isoformat()
        lines.append(f"{driver},{lat},13.40,5,0,{at}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_zones_and_events_from_the_command_line(
    launcher: Launcher, data_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"zones-cli-e2e-secret-of-32-bytes!!")
    server = launcher.start(data_dir, "--token-secret-file", str(secret))
    t = ("--target", server.target)
    issue = ("token", "issue", "--secret-file", str(secret))
    admin = ok(run(*issue, "--scope", "zones", "--scope", "events", "--scope", "drivers:write"))
    admin = admin.strip()
    only_read = ok(run(*issue, "--scope", "drivers:read")).strip()

    # Zones: a circle, a polygon from stdin; refused without the scope; bad geometry explained.
    denied = run("zones", "list", *t, token=only_read)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr
    circle = jsonl(ok(run("zones", "create", "Airport", "--circle", "52.36,13.50,800",
                          "--label", "airport", "--dwell", "5m", "--id", "ber", "--json", *t,
                          token=admin)))[0]  # fmt: skip
    assert (circle["id"], circle["version"], circle["dwell_s"]) == ("ber", 1, 300.0)
    assert circle["circle"] == {"latitude": 52.36, "longitude": 13.5, "radius_m": 800.0}
    line = ok(run("zones", "create", "Centre", "--geojson", "-", "--label", "surge",
                  "--id", "mitte", *t, stdin=SQUARE, token=admin))  # fmt: skip
    assert line.startswith("mitte  v1  'Centre'  surge  Polygon")
    bow_tie = '{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}'
    bad = run("zones", "create", "Bow", "--geojson", "-", *t, token=admin, stdin=bow_tie)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr, bad.stderr
    listed = jsonl(ok(run("zones", "list", "--json", *t, token=admin)))
    assert [z["id"] for z in listed] == ["ber", "mitte"]
    assert [z["id"] for z in jsonl(ok(run("zones", "list", "--label", "surge", "--json", *t,
                                          token=admin)))] == ["mitte"]  # fmt: skip
    got = ok(run("zones", "get", "mitte", *t, token=admin))
    assert SQUARE in got
    updated = jsonl(ok(run("zones", "update", "ber", "--name", "BER", "--dwell", "0", "--json",
                           *t, token=admin)))[0]  # fmt: skip
    assert (updated["name"], updated["version"], updated["dwell_s"]) == ("BER", 2, 0.0)
    stale = run("zones", "delete", "ber", "--version", "1", *t, token=admin)
    assert stale.returncode == 1
    assert "FAILED_PRECONDITION" in stale.stderr
    ok(run("zones", "delete", "ber", "--version", "2", *t, token=admin))
    missing = run("zones", "get", "ber", *t, token=admin)
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr

    # A drive through the square: online, enter, exit.
    route = fixes_csv(tmp_path / "a.csv", "cab-1", [52.50, 52.52, 52.54], start_s=60)
    ok(run("upload", "cab-1", "--file", str(route), *t, token=admin))
    replay = jsonl(ok(run("events", "--json", *t, token=admin)))
    assert [(e["type"], e.get("zoneId", "")) for e in replay] == [
        ("driver.online", ""), ("zone.enter", "mitte"), ("zone.exit", "mitte"),
    ]  # fmt: skip
    ids = [int(str(e["id"])) for e in replay]
    assert ids == sorted(ids)
    after = ok(run("events", "--after", str(ids[0]), "--type", "zone.*", *t, token=admin))
    lines = after.splitlines()
    assert [x.split()[2] for x in lines] == ["zone.enter", "zone.exit"]
    assert "zone=mitte" in lines[0]
    assert "cab-1" in lines[0]
    none = ok(run("events", "--zone", "ber", *t, token=admin))
    assert none == ""
    no_scope = run("events", *t, token=only_read)
    assert no_scope.returncode == 1
    assert "PERMISSION_DENIED" in no_scope.stderr

    # --follow from the last id: the next crossing arrives live.
    follow = subprocess.Popen(
        [sys.executable, "-m", "driver_service", "events", "--follow", "--after", str(ids[-1]),
         "--json", *t],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env({"DRIVER_SERVICE_TOKEN": admin}),
    )  # fmt: skip
    try:
        back = fixes_csv(tmp_path / "b.csv", "cab-1", [52.52], start_s=10)
        ok(run("upload", "cab-1", "--file", str(back), *t, token=admin))
        assert follow.stdout is not None
        event = json.loads(follow.stdout.readline())
        assert (event["type"], event["zoneId"], int(event["id"])) == (
            "zone.enter", "mitte", ids[-1] + 1,
        )  # fmt: skip
    finally:
        follow.terminate()
        follow.communicate(timeout=10)
