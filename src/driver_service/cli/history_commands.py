"""History commands: `history DRIVER --since 2h [--format table|json|geojson|gpx]`,
`trips DRIVER --since 1d`, `forget DRIVER --yes` (HistoryService over the generated stubs)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc
from driver_service.cli._client import add_client_options, client_settings
from driver_service.cli._output import emit, fail
from driver_service.client import ClientConfigError, channel_options, from_rpc_error, utc_from_ns
from driver_service.wire import timestamp_to_ns

_NS = 1_000_000_000
_AGO = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DISTANCE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(km|m)?\s*$")
GPX_NS = "http://www.topografix.com/GPX/1/1"
#: A deadline for a whole trail stream (a month of 1 Hz fixes is millions of points).
_STREAM_TIMEOUT_S = 300.0


def parse_time_ns(text: str, *, now_ns: int | None = None) -> int:
    """`2h`, `1d`, `90m`, `30s`, `2w` before now, or an ISO 8601 time (UTC unless it says)."""
    now = time.time_ns() if now_ns is None else now_ns
    match = _AGO.match(text)
    if match is not None:
        return now - int(float(match.group(1)) * _UNIT_S[match.group(2)] * _NS)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (a duration before now such as 2h, 1d, 10m, or an ISO time"
            " such as 2024-05-01T14:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * _NS + moment.microsecond * 1000


def parse_distance_m(text: str) -> float:
    """`10m`, `0.5km`, `25` (metres)."""
    match = _DISTANCE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a distance: {text!r} (e.g. 10m, 0.5km)")
    return float(match.group(1)) * (1000.0 if match.group(2) == "km" else 1.0)


def _ts(ns: int) -> Timestamp:
    value = Timestamp()
    value.FromNanoseconds(ns)
    return value


def _iso(ts: Timestamp) -> str:
    return utc_from_ns(timestamp_to_ns(ts)).isoformat().replace("+00:00", "Z")


def _channel(args: argparse.Namespace) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    settings = client_settings(args)
    try:
        credentials = settings.credentials()
    except ClientConfigError as exc:
        raise SystemExit(f"driver-service: {exc}") from None
    options = channel_options()
    if credentials is not None:
        channel = grpc.aio.secure_channel(args.target, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(args.target, options=options)
    return channel, settings.metadata()


def _add_range(parser: argparse.ArgumentParser, default_since: str) -> None:
    parser.add_argument("driver_id")
    parser.add_argument(
        "--since",
        type=parse_time_ns,
        default=default_since,
        help=f"start (inclusive): 2h, 1d, 10m before now, or an ISO time [default {default_since}]",
    )
    parser.add_argument(
        "--until", type=parse_time_ns, default=None, help="end (exclusive) [default now]"
    )


def register(commands: Any) -> None:
    history = commands.add_parser("history", help="a driver's trail in a time range")
    _add_range(history, "1h")
    history.add_argument(
        "--simplify",
        type=parse_distance_m,
        default=0.0,
        help="thin for display: drop fixes within this distance of the line (e.g. 10m)",
    )
    history.add_argument("--max-points", type=int, default=0, help="at most this many points")
    history.add_argument(
        "--format",
        choices=["table", "json", "geojson", "gpx"],
        default=None,
        help="table, json (one point per line), geojson (a Feature), gpx (GPX 1.1)"
        " [default table; json with --json]",
    )
    add_client_options(history)
    history.set_defaults(run=lambda a: asyncio.run(_history(a)))

    trips = commands.add_parser("trips", help="a driver's trips and stops in a time range")
    _add_range(trips, "1d")
    add_client_options(trips)
    trips.set_defaults(run=lambda a: asyncio.run(_trips(a)))

    forget = commands.add_parser(
        "forget", help="erase everything stored about a driver (needs drivers:forget)"
    )
    forget.add_argument("driver_id")
    forget.add_argument(
        "--yes", action="store_true", help="do not ask (required when stdin is not a terminal)"
    )
    add_client_options(forget)
    forget.set_defaults(run=_confirm_then_forget)


# --- history ---------------------------------------------------------------------------------
async def _history(args: argparse.Namespace) -> int:
    until = time.time_ns() if args.until is None else args.until
    request = hpb.GetTrailRequest(
        driver_id=args.driver_id,
        since=_ts(args.since),
        until=_ts(until),
        simplify_tolerance_m=args.simplify,
        max_points=args.max_points,
    )
    fmt = args.format or ("json" if args.json else "table")
    channel, metadata = _channel(args)
    points: list[hpb.TrailPoint] = []
    async with channel:
        stub = hpb_grpc.HistoryServiceStub(channel)
        try:
            call = stub.GetTrail(
                request, metadata=metadata, timeout=max(args.timeout, _STREAM_TIMEOUT_S)
            )
            async for chunk in call:
                if fmt == "json":
                    for p in chunk.points:
                        print(json.dumps(_point_record(p)))
                else:
                    points.extend(chunk.points)
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)
    if fmt == "geojson":
        print(json.dumps(geojson_feature(args.driver_id, args.since, until, points)))
    elif fmt == "gpx":
        sys.stdout.write(gpx_document(args.driver_id, points))
    elif fmt == "table":
        _print_table(
            [_point_row(p) for p in points],
            ("TIME", "LATITUDE", "LONGITUDE", "SPEED M/S", "HEADING"),
        )
    return 0


def _point_row(p: hpb.TrailPoint) -> tuple[str, ...]:
    return (
        _iso(p.recorded_at),
        f"{p.latitude:.6f}",
        f"{p.longitude:.6f}",
        f"{p.speed_mps:.1f}",
        f"{p.heading_degrees:.0f}",
    )


def _point_record(p: hpb.TrailPoint) -> dict[str, object]:
    return {
        "time": _iso(p.recorded_at),
        "latitude": p.latitude,
        "longitude": p.longitude,
        "speed_mps": round(p.speed_mps, 3),
        "heading_degrees": round(p.heading_degrees, 3),
    }


def geojson_feature(
    driver_id: str, since_ns: int, until_ns: int, points: list[hpb.TrailPoint]
) -> dict[str, object]:
    """One Feature: a LineString of [longitude, latitude] (a Point for a single fix, no
    geometry for none), the fix times beside it in `coordTimes` (the usual extension)."""
    coordinates = [[p.longitude, p.latitude] for p in points]
    geometry: dict[str, object] | None
    if len(coordinates) >= 2:
        geometry = {"type": "LineString", "coordinates": coordinates}
    elif coordinates:
        geometry = {"type": "Point", "coordinates": coordinates[0]}
    else:
        geometry = None
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "driver_id": driver_id,
            "since": utc_from_ns(since_ns).isoformat().replace("+00:00", "Z"),
            "until": utc_from_ns(until_ns).isoformat().replace("+00:00", "Z"),
            "points": len(points),
            "coordTimes": [_iso(p.recorded_at) for p in points],
            "speeds_mps": [round(p.speed_mps, 3) for p in points],
        },
    }


def gpx_document(driver_id: str, points: list[hpb.TrailPoint]) -> str:
    """GPX 1.1: one track named after the driver, one segment, a trkpt per fix with <time>."""
    ET.register_namespace("", GPX_NS)
    root = ET.Element(f"{{{GPX_NS}}}gpx", {"version": "1.1", "creator": "driver-service"})
    track = ET.SubElement(root, f"{{{GPX_NS}}}trk")
    ET.SubElement(track, f"{{{GPX_NS}}}name").text = driver_id
    segment = ET.SubElement(track, f"{{{GPX_NS}}}trkseg")
    for p in points:
        point = ET.SubElement(
            segment, f"{{{GPX_NS}}}trkpt", {"lat": repr(p.latitude), "lon": repr(p.longitude)}
        )
        ET.SubElement(point, f"{{{GPX_NS}}}time").text = _iso(p.recorded_at)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


# --- trips -----------------------------------------------------------------------------------
async def _trips(args: argparse.Namespace) -> int:
    until = time.time_ns() if args.until is None else args.until
    request = hpb.GetTripsRequest(driver_id=args.driver_id, since=_ts(args.since), until=_ts(until))
    channel, metadata = _channel(args)
    async with channel:
        stub = hpb_grpc.HistoryServiceStub(channel)
        try:
            reply = await stub.GetTrips(request, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)
    records = [_trip_record(t) for t in reply.trips] + [_stop_record(s) for s in reply.stops]
    records.sort(key=lambda r: str(r["start"]))
    if args.json:
        for record in records:
            print(json.dumps(record))
        return 0
    _print_table(
        [
            (
                str(r["kind"]),
                str(r["start"]),
                str(r["end"]),
                _hms(float(str(r["duration_s"]))),
                f"{float(str(r.get('distance_m', 0.0))) / 1000:.2f} km"
                if r["kind"] == "trip"
                else "",
                f"{float(str(r['max_speed_mps'])) * 3.6:.0f} km/h" if r["kind"] == "trip" else "",
                _where(r["start_position"]),
                _where(r["end_position"]) if r["kind"] == "trip" else "",
            )
            for r in records
        ],
        ("KIND", "START", "END", "DURATION", "DISTANCE", "MAX SPEED", "FROM / AT", "TO"),
    )
    return 0


def _where(position: object) -> str:
    assert isinstance(position, dict)
    return f"{position['latitude']:.5f},{position['longitude']:.5f}"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _trip_record(t: hpb.Trip) -> dict[str, object]:
    return {
        "kind": "trip",
        "start": _iso(t.start_time),
        "end": _iso(t.end_time),
        "duration_s": t.duration.ToNanoseconds() / _NS,
        "distance_m": round(t.distance_m, 1),
        "average_speed_mps": round(t.average_speed_mps, 3),
        "max_speed_mps": round(t.max_speed_mps, 3),
        "start_position": {"latitude": t.start.latitude, "longitude": t.start.longitude},
        "end_position": {"latitude": t.end.latitude, "longitude": t.end.longitude},
    }


def _stop_record(s: hpb.Stop) -> dict[str, object]:
    return {
        "kind": "stop",
        "start": _iso(s.start_time),
        "end": _iso(s.end_time),
        "duration_s": s.duration.ToNanoseconds() / _NS,
        "start_position": {"latitude": s.position.latitude, "longitude": s.position.longitude},
    }


# --- forget ----------------------------------------------------------------------------------
def _confirm_then_forget(args: argparse.Namespace) -> int:
    """Destructive: asks on a terminal (type the id), needs --yes anywhere else."""
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"driver-service: forget erases everything stored about {args.driver_id!r} and"
                " cannot be undone; add --yes to confirm",
                file=sys.stderr,
            )
            return 2
        typed = input(f"Erase everything stored about {args.driver_id!r}? Type its id to confirm: ")
        if typed.strip() != args.driver_id:
            print("driver-service: not confirmed; nothing erased", file=sys.stderr)
            return 1
    return asyncio.run(_forget(args))


async def _forget(args: argparse.Namespace) -> int:
    channel, metadata = _channel(args)
    async with channel:
        stub = hpb_grpc.HistoryServiceStub(channel)
        try:
            reply = await stub.ForgetDriver(
                hpb.ForgetDriverRequest(driver_id=args.driver_id),
                metadata=metadata,
                timeout=max(args.timeout, 60.0),
            )
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)
    record = {
        "driver_id": args.driver_id,
        "history_fixes": reply.history_fixes,
        "driver_records": reply.driver_records,
        "queued_commands": reply.queued_commands,
        "live_entries": reply.live_entries,
        "tracker_states": reply.tracker_states,
        "events": reply.events,
    }
    emit(
        record,
        args.json,
        f"erased {args.driver_id}: {reply.history_fixes} history fixes,"
        f" {reply.driver_records} driver record(s), {reply.queued_commands} command(s),"
        f" {reply.live_entries} live/index entries, {reply.tracker_states} tracker state(s),"
        f" {reply.events} event(s)",
    )
    return 0


def _print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """Columns as wide as their widest cell (a header only when there are rows)."""
    if not rows:
        return
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
