"""Dispatch from the command line against a real server: simulated drivers move, `nearby`
finds them, `offer --wait` reaches one on its session, and the simulated driver answers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.server_process import Launcher, clean_env

pytestmark = pytest.mark.e2e


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver_service", *args, "--target", target],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
    )  # fmt: skip


def test_simulated_drivers_are_found_and_answer_offers(launcher: Launcher, data_dir: Path) -> None:
    server = launcher.start(data_dir)
    fleet = subprocess.Popen(
        [sys.executable, "-m", "driver_service", "simulate", "--drivers", "5", "--rate", "20",
         "--id-prefix", "cab-", "--seed", "7", "--accept-rate", "1", "--json",
         "--target", server.target],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    try:
        found: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        # Every simulated driver starts AVAILABLE; one may turn BUSY (about once a minute).
        while len(found) < 4 and time.monotonic() < deadline:
            time.sleep(0.3)
            nearby = cli(server.target, "nearby", "52.52", "13.405", "--radius", "20km", "--json")
            assert nearby.returncode == 0, nearby.stderr
            found = [json.loads(line) for line in nearby.stdout.splitlines()]
        assert len(found) >= 4, found
        assert {d["driver_id"] for d in found} <= {f"cab-{i}" for i in range(1, 6)}
        assert all(d["status"] == "AVAILABLE" for d in found)
        distances = [float(d["distance_m"]) for d in found]  # type: ignore[arg-type]
        assert distances == sorted(distances)
        target_driver = str(found[0]["driver_id"])
        offer = cli(server.target, "offer", target_driver, "--pickup", "Alexanderplatz 1",
                    "--ttl", "10s", "--wait", "--json")  # fmt: skip
        assert offer.returncode == 0, offer.stderr
        outcome = json.loads(offer.stdout.splitlines()[-1])
        assert outcome["state"] == "ACCEPTED", outcome
    finally:
        fleet.send_signal(signal.SIGINT)
        out, err = fleet.communicate(timeout=20)
    offers = [json.loads(line) for line in out.splitlines() if '"ride_offer"' in line]
    assert [o["decision"] for o in offers] == ["accept"], (out, err)
