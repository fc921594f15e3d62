"""Zones: the CPU a location update pays for zone evaluation, and event -> WatchEvents latency.

    .venv/bin/python -m bench.zones [--zones 10000] [--total 50000] [--repeats 3]

cpu      (twice: drivers moving ~10 m per update, as they drive, --per-driver updates each
         (100 by default: --total / 100 drivers, so a driver's first update, which logs
         driver.online and an enter for every zone it starts in, does not dominate); then
         bench/ingest's updates,
         which jump kilometres between a driver's updates, so each crosses many zones)
         DriverTracking's upload path (validation, rate limit, LocationWriter group commit,
         SqliteRepository with its ZoneEvaluator: the transactional outbox) fed --total
         updates (bench/ingest's, in Berlin, 10,000 drivers), paired in the same process:
         a store with no zones, then one with --zones zones (bench/zone_index's: 70 % star
         polygons, 30 % circles, in a 100 km square around Berlin), alternating which runs
         first. The figure is CPU seconds of the whole process (every thread) per update,
         median over the repeats; "added" is with-zones minus without, as a share of without.
instructions  (--instructions; needs valgrind) the same updates as cpu, in a child process
         under callgrind with instrumentation on only while they are offered and committed
         (start-up, loading the zones and the first commit are not counted): instructions
         per update, with no zones and with --zones zones, driving and teleporting. Repeats
         within ~1 % whatever else loads the machine, where the CPU time above moves by
         ±30 %; instructions are not time (GEOS and the interpreter differ in cycles per
         instruction), so both are reported.
serve    (also --serve alone) the whole accepted update: a real `driver-service serve`
         subprocess on SQLite (pinned to core 0), fed the same updates as one streaming
         UploadLocations call by h2load (core 1, a prebuilt body, so the client costs the
         server nothing):
         the server process's CPU time (/proc, every thread) per stored update, with no zones
         and with --zones zones, driving and teleporting, --repeats pairs alternating which
         runs first. This is the issue's denominator, "today's per-update cost": gRPC, the
         interceptors, validation, the group commit and the evaluator together.
         --serve --instructions: the server under callgrind instead, one pair, counting
         the instructions while the updates after the first go in. Add --group NONE ZONES
         for commit groups of those sizes and no periodic work (bench/fixed_groups.py):
         under valgrind the writer's own groups shrink ~10x and follow the machine's
         timing, which made this count unrepeatable (BENCHMARKS.md, "Zones", fourth pass).
startup  the first commit after opening a store holding --zones zones: the evaluator loads
         every zone (polygons from the WKB stored beside their GeoJSON) and indexes them
         before evaluating.
latency  (also --latency alone) a real server (grpc.aio, built as `serve` builds it), one
         WatchEvents watcher, a driver crossing a zone one UploadLocations at a time:
         recorded_at (just before the commit) -> the watcher has the event, and upload
         sent -> event received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import astuple
from pathlib import Path
from typing import Any

import grpc

from bench.common import (
    CLIENT_CORE,
    FIXED_HASHES,
    PYTHON,
    ROOT,
    cpu_split,
    free_port,
    grpc_frame,
    pinned,
)
from bench.common import wait_for_port as _wait_for_port
from bench.ingest import UPLOAD, stored_rows, update
from bench.zone_index import make_zones
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service._gen.driver.v1 import zones_pb2_grpc as zpb_grpc
from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.app.evaluation import ZoneEvaluator
from driver_service.app.fanout import MemoryBus
from driver_service.app.ratelimit import RateLimiter
from driver_service.app.tracking import DriverTracking
from driver_service.domain.zones import Zone
from driver_service.server.composition import build_services
from driver_service.server.config import SQLITE_FILE_NAME, ServerSettings
from driver_service.server.running import start_server
from driver_service.wire import pb_to_location

S = 10**9


async def _fill(path: Path, zones: list[Zone]) -> float:
    repo = await SqliteRepository.open(path, evaluator=ZoneEvaluator())
    try:
        t0 = time.perf_counter()
        for zone in zones:
            await repo.create_zone(zone, time.time_ns())
        return time.perf_counter() - t0
    finally:
        await repo.close()


def driving(i: int, base_ns: int, drivers: int = 10_000) -> pb.LocationUpdate:
    """Update `i` of `drivers` drivers each moving ~10 m east per update (one a second): how
    drivers move, crossing a zone's edge now and then."""
    n, step = i % drivers, i // drivers
    msg = pb.LocationUpdate(
        driver_id=f"drv-{n}",
        latitude=52.3 + (n % 100) / 500,
        longitude=13.2 + (n // 100) / 500 + step * 0.00015,
        speed_mps=10.0,
        heading_degrees=90.0,
    )
    msg.timestamp.FromNanoseconds(base_ns + step * S + n)
    return msg


def _callgrind(on: bool, pid: int | None = None) -> None:
    """Switch a process's (this one's) callgrind instrumentation on or off (see
    instructions_part)."""
    switch = ["callgrind_control", "-i", "on" if on else "off", str(pid or os.getpid())]
    subprocess.run(switch, check=True, capture_output=True)


async def _ingest(
    path: Path, total: int, moving: bool, per_driver: int, counted: bool = False
) -> tuple[float, int, float]:
    """(CPU seconds, events logged, seconds of the first commit) for `total` updates;
    `counted`: under callgrind, instrumented only while the updates after the first go in."""
    base = time.time_ns() - 3600 * S
    drivers = max(1, total // per_driver)
    if moving:
        rows = [astuple(pb_to_location(driving(i, base, drivers))) for i in range(total)]
    else:
        rows = [astuple(pb_to_location(update(i, base))) for i in range(total)]
    repo = await SqliteRepository.open(path, evaluator=ZoneEvaluator())
    tracking = DriverTracking(repo, MemoryBus(), rate_limiter=RateLimiter(100, 20_000))
    await tracking.start()
    try:
        t0 = time.perf_counter()
        first = tracking.new_upload()
        await first.offer(*rows[0])
        await first.finish()
        startup = time.perf_counter() - t0
        if counted:
            _callgrind(True)
        cpu0 = time.process_time()
        upload = tracking.new_upload()
        for row in rows[1:]:
            await upload.offer(*row)
        result = await upload.finish()
        cpu = time.process_time() - cpu0
        if counted:
            _callgrind(False)
        assert result.persisted_count == total - 1, result
        return cpu, await repo.last_event_id(), startup
    finally:
        await tracking.close()


def cpu_part(
    work: Path, zones: int, total: int, repeats: int, moving: bool = True, per_driver: int = 100
) -> dict[str, Any]:
    zone_list = make_zones(zones, random.Random(7))
    per_update: dict[str, list[float]] = {"none": [], "zones": []}
    events: list[int] = []
    startups: list[float] = []
    fill_s = 0.0
    for r in range(repeats):
        order = ("none", "zones") if r % 2 == 0 else ("zones", "none")
        for kind in order:
            path = work / f"zones-{r}-{kind}.sqlite3"
            if kind == "zones":
                fill_s = asyncio.run(_fill(path, zone_list))
            cpu, logged, startup = asyncio.run(_ingest(path, total, moving, per_driver))
            per_update[kind].append(cpu / (total - 1) * 1e6)
            if kind == "zones":
                events.append(logged)
                startups.append(startup)
            path.unlink()
    none = statistics.median(per_update["none"])
    with_zones = statistics.median(per_update["zones"])
    added = with_zones - none
    return {
        "zones": zones,
        "updates": total,
        "updates_per_driver": per_driver if moving else None,
        "cpu_us_per_update_no_zones": none,
        "cpu_us_per_update_with_zones": with_zones,
        "added_us_per_update": added,
        "added_share": added / none,
        "meets_target_20pct": added / none <= 0.20,
        "runs_us": per_update,
        "events_logged": events,
        "first_commit_s_with_zones": statistics.median(startups),
        "create_zones_s": fill_s,
    }


def _instructions(dump: Path) -> int:
    """The total of a callgrind dump (its `totals:` line; `summary:` is 0 when collection
    started switched off)."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def instructions_part(
    work: Path, zones: int, total: int, moving: bool, per_driver: int = 100
) -> dict[str, Any]:
    """Instructions per update with no zones and with `zones` zones (one child each)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"skipped": "valgrind missing (Debian: valgrind)"}
    template = work / "instructions-template.sqlite3"
    if not template.exists():
        asyncio.run(_fill(template, make_zones(zones, random.Random(7))))
    per_update: dict[str, float] = {}
    for kind in ("none", "zones"):
        path = work / f"instructions-{kind}.sqlite3"
        if kind == "zones":
            shutil.copy(template, path)
        dump = work / f"callgrind-{kind}.out"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        argv += [f"--callgrind-out-file={dump}", PYTHON, "-m", "bench.zones", "--counted-child"]
        argv += [str(path), "--total", str(total), "--per-driver", str(per_driver)]
        argv += [] if moving else ["--teleporting"]
        subprocess.run(argv, cwd=ROOT, env=FIXED_HASHES, check=True, capture_output=True)
        per_update[kind] = _instructions(dump) / (total - 1)
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
    added = per_update["zones"] - per_update["none"]
    return {
        "updates": total,
        "updates_per_driver": per_driver if moving else None,
        "instructions_per_update_no_zones": round(per_update["none"]),
        "instructions_per_update_with_zones": round(per_update["zones"]),
        "added_instructions_per_update": round(added),
        "added_share": added / per_update["none"],
    }


def _h2load_stream(port: int, body: Path) -> None:
    """One UploadLocations call carrying every update framed in `body`."""
    argv = ["h2load", "-n", "1", "-c", "1", "-d", str(body)]
    argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    argv += [f"http://127.0.0.1:{port}{UPLOAD}"]
    out = subprocess.run(pinned(CLIENT_CORE, argv), capture_output=True, text=True, check=True)
    if "1 succeeded" not in out.stdout:
        raise RuntimeError(f"h2load: {out.stdout[-500:]}")


def _serve_once(
    work: Path,
    template: Path | None,
    messages: list[pb.LocationUpdate],
    tag: str,
    counted: bool = False,
    group: int = 0,
) -> tuple[float, int, float, float]:
    """(server CPU seconds, updates stored, mean updates a commit or nan, the user-space
    part of the CPU seconds) for all but the first of `messages`, sent to a fresh
    `driver-service serve` (the first goes alone before: start-up, loading zones);
    `counted`: the server runs under callgrind, and the first figure is its instructions
    while the rest went in (the last nan); `group`: commit groups of that size and no
    periodic work (bench/fixed_groups.py)."""
    data = work / f"serve-{tag}"
    data.mkdir()
    if template is not None:
        shutil.copy(template, data / SQLITE_FILE_NAME)
    first, rest = work / f"first-{tag}.bin", work / f"rest-{tag}.bin"
    first.write_bytes(grpc_frame(messages[0].SerializeToString()))
    rest.write_bytes(b"".join(grpc_frame(m.SerializeToString()) for m in messages[1:]))
    port = free_port()
    server = ["bench.fixed_groups", str(group)] if group else ["driver_service"]
    argv = [PYTHON, "-m", *server, "serve", "--insecure", "--listen"]
    argv += [f"127.0.0.1:{port}", "--admin-listen", "", "--http-listen", ""]
    argv += ["--data-dir", str(data), "--rate-limit", "0", "--stale-after", "86400"]
    dump = work / f"callgrind-serve-{tag}.out"
    if counted:
        callgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        argv = [*callgrind, f"--callgrind-out-file={dump}", *argv]
    with (work / f"serve-{tag}.log").open("wb") as log:
        proc = subprocess.Popen(
            pinned("0", argv), cwd=ROOT, env=FIXED_HASHES, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, proc, 900.0 if counted else 120.0)
        _h2load_stream(port, first)
        before = stored_rows(data, "")
        if counted:
            _callgrind(True, proc.pid)
        user0, system0 = cpu_split(proc.pid)
        _h2load_stream(port, rest)
        user1, system1 = cpu_split(proc.pid)
        user = user1 - user0
        cpu = user + system1 - system0
        if counted:
            _callgrind(False, proc.pid)
            control = ["callgrind_control", "-d", str(proc.pid)]
            subprocess.run(control, check=True, capture_output=True)
            # The forced dump is the file with a part suffix (the main one is written at exit).
            parts = [d for d in work.glob(dump.name + ".*") if d.name != dump.name]
            cpu, user = float(sum(_instructions(d) for d in parts)), math.nan
        stored = stored_rows(data, "") - before
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:  # the figures are taken: no need to wait longer
            proc.kill()
            proc.wait(10)
        shutil.rmtree(data)
    return cpu, stored, _mean_group(work / f"serve-{tag}.log"), user


def _user_part(user_per_update: dict[str, list[float]]) -> dict[str, Any]:
    none, zones = (statistics.median(user_per_update[k]) for k in ("none", "zones"))
    return {
        "user_us_per_update": {"none": none, "zones": zones},
        "user_added_share": (zones - none) / none,
        "user_runs": user_per_update,
    }


def _mean_group(log: Path) -> float:
    """Mean updates a commit from bench/fixed_groups.py's line at exit (nan without it);
    the first commit, of the single first update, is left out."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("fixed_groups: commits"):
            words = line.split()
            commits, updates = int(words[2]), int(words[4])
            return (updates - 1) / (commits - 1) if commits > 1 else math.nan
    return math.nan


def serve_part(
    work: Path,
    zones: int,
    total: int,
    repeats: int,
    moving: bool,
    per_driver: int = 100,
    counted: bool = False,
    groups: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """Server CPU per accepted update through `serve`, no zones against `zones` zones;
    `groups`: fixed commit group sizes (no zones, zones), 0 for the writer's own."""
    if shutil.which("h2load") is None:
        return {"skipped": "h2load missing (Debian: nghttp2-client)"}
    template = work / "serve-template.sqlite3"
    if not template.exists():
        asyncio.run(_fill(template, make_zones(zones, random.Random(7))))
    base = time.time_ns() - 3600 * S
    drivers = max(1, total // per_driver)
    messages = [driving(i, base, drivers) if moving else update(i, base) for i in range(total)]
    per_update: dict[str, list[float]] = {"none": [], "zones": []}
    mean_groups: dict[str, list[float]] = {"none": [], "zones": []}
    user_per_update: dict[str, list[float]] = {"none": [], "zones": []}
    for r in range(repeats):
        for kind in ("none", "zones") if r % 2 == 0 else ("zones", "none"):
            cpu, stored, mean_group, user = _serve_once(
                work,
                template if kind == "zones" else None,
                messages,
                f"{'driving' if moving else 'teleporting'}-{r}-{kind}",
                counted,
                groups[kind == "zones"],
            )
            if stored != total - 1:
                raise RuntimeError(f"{stored} of {total - 1} updates stored")
            per_update[kind].append(cpu / stored if counted else cpu / stored * 1e6)
            mean_groups[kind].append(mean_group)
            user_per_update[kind].append(user / stored * 1e6)
    none = statistics.median(per_update["none"])
    with_zones = statistics.median(per_update["zones"])
    unit = "instructions" if counted else "cpu_us"
    return {
        "updates": total,
        "updates_per_driver": per_driver if moving else None,
        "unit": "server instructions (callgrind)" if counted else "server CPU µs",
        f"server_{unit}_per_update_no_zones": none,
        f"server_{unit}_per_update_with_zones": with_zones,
        "added_share": (with_zones - none) / none,
        "runs": per_update,
        # CPU time only: user space alone, what callgrind's instructions count (the
        # kernel's share, sockets and SQLite's WAL writes, is left out of those).
        **({} if counted else _user_part(user_per_update)),
        "fixed_groups": list(groups) if any(groups) else None,
        "mean_updates_per_commit": mean_groups if any(groups) else None,
    }


async def _latency(work: Path, crossings: int) -> dict[str, Any]:
    settings = ServerSettings(
        listen="127.0.0.1:0", admin_listen="127.0.0.1:0", data_dir=work / "latency",
        insecure=True, stale_after=86_400, rate_limit=0,
    )  # fmt: skip
    (work / "latency").mkdir()
    services = await build_services(settings)
    running = await start_server(settings, services)
    received: asyncio.Queue[tuple[int, float, epb.Event]] = asyncio.Queue()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            zone = zpb.Zone(
                id="hub", circle=zpb.Circle(latitude=52.0, longitude=13.0, radius_m=500)
            )
            await zpb_grpc.ZoneServiceStub(channel).CreateZone(zpb.CreateZoneRequest(zone=zone))
            call = epb_grpc.EventServiceStub(channel).WatchEvents(
                epb.WatchEventsRequest(types=["zone.*"])
            )

            async def watch() -> None:
                async for event in call:
                    received.put_nowait((time.time_ns(), time.perf_counter(), event))

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.3)
            stub = pb_grpc.DriverServiceStub(channel)
            base = time.time_ns() - 3600 * S
            commit_ms: list[float] = []
            upload_ms: list[float] = []
            for i in range(crossings + 1):
                msg = pb.LocationUpdate(
                    driver_id="lat-1", latitude=52.0 if i % 2 else 52.05, longitude=13.0
                )
                msg.timestamp.FromNanoseconds(base + i * S)
                sent = time.perf_counter()
                await stub.UploadLocations(iter([msg]))
                if i == 0:
                    continue  # outside: no zone event
                wall, at, event = await asyncio.wait_for(received.get(), 10)
                commit_ms.append((wall - event.recorded_at.ToNanoseconds()) / 1e6)
                upload_ms.append((at - sent) * 1e3)
            watcher.cancel()
    finally:
        await running.stop(0)

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1]

    return {
        "crossings": crossings,
        "recorded_to_watcher_ms": {"p50": p(commit_ms, 50), "p99": p(commit_ms, 99)},
        "upload_to_watcher_ms": {"p50": p(upload_ms, 50), "p99": p(upload_ms, 99)},
    }


def run(
    work: Path, repeats: int, zones: int, total: int, crossings: int, per_driver: int = 100
) -> dict[str, Any]:
    result = cpu_part(work, zones, total, repeats, moving=True, per_driver=per_driver)
    result["teleporting"] = cpu_part(work, zones, total, repeats, moving=False)
    # What the target is judged on: the whole accepted update (see BENCHMARKS.md).
    result["serve"] = {
        "driving": serve_part(work, zones, total, repeats, True, per_driver),
        "teleporting": serve_part(work, zones, total, repeats, False),
    }
    if crossings > 0:
        result["latency"] = asyncio.run(_latency(work, crossings))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zones", description=__doc__)
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--total", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crossings", type=int, default=500, help="0: skip latency")
    parser.add_argument("--per-driver", type=int, default=100)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead: instructions per update under callgrind (driving, then teleporting)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="instead: server CPU per accepted update through `driver-service serve`",
    )
    parser.add_argument(
        "--group",
        type=int,
        nargs=2,
        default=(0, 0),
        metavar=("NONE", "ZONES"),
        help="with --serve: commit groups of these sizes (no zones, with zones) and no "
        "periodic work (bench/fixed_groups.py), so a callgrind count depends on the updates "
        "alone; 0: the writer's own",
    )
    parser.add_argument("--workload", choices=("driving", "teleporting", "both"), default="both")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="instead: event -> WatchEvents latency only (--crossings crossings)",
    )
    parser.add_argument("--counted-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--teleporting", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.counted_child:  # one store, run by instructions_part under callgrind
        asyncio.run(
            _ingest(args.counted_child, args.total, not args.teleporting, args.per_driver, True)
        )
        return 0
    if args.latency:
        with tempfile.TemporaryDirectory(prefix="bench-zones-") as tmp:
            print(json.dumps(asyncio.run(_latency(Path(tmp), args.crossings)), indent=2))
        return 0
    if args.serve:
        # With --instructions: the server under callgrind, one pair (counts repeat).
        counted = args.instructions
        repeats = 1 if counted else args.repeats
        groups = tuple(args.group)
        served: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="bench-zones-") as tmp:
            for name, moving, per_driver in (
                ("driving", True, args.per_driver),
                ("teleporting", False, 100),
            ):
                if args.workload in (name, "both"):
                    served[name] = serve_part(
                        Path(tmp), args.zones, args.total, repeats, moving, per_driver,
                        counted, groups,
                    )  # fmt: skip
        print(json.dumps(served, indent=2))
        return 0
    if args.instructions:
        with tempfile.TemporaryDirectory(prefix="bench-zones-") as tmp:
            counted = {
                "driving": instructions_part(
                    Path(tmp), args.zones, args.total, True, args.per_driver
                ),
                "teleporting": instructions_part(Path(tmp), args.zones, args.total, False),
            }
        print(json.dumps(counted, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-zones-") as tmp:
        result = run(
            Path(tmp), args.repeats, args.zones, args.total, args.crossings, args.per_driver
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
