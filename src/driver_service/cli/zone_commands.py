"""Zones and events: `zones create|list|get|update|delete`, `events [--follow]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc
from google.protobuf import json_format

from driver_service._gen.driver.v1 import events_pb2 as epb
from driver_service._gen.driver.v1 import events_pb2_grpc as epb_grpc
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service._gen.driver.v1 import zones_pb2_grpc as zpb_grpc
from driver_service.cli._client import add_client_options, client_settings, open_channel
from driver_service.cli._output import emit, fail
from driver_service.client import from_rpc_error, utc_from_ns
from driver_service.wire import timestamp_to_ns

_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_dwell_s(text: str) -> float:
    """`5m`, `90s`, `1h`, `0` (seconds; 0 means no dwell events)."""
    value = text.strip()
    number, unit = value, "s"
    for suffix in ("ms", "s", "m", "h", "d"):
        if value.endswith(suffix):
            number, unit = value[: -len(suffix)], suffix
            break
    try:
        seconds = float(number) * _SECONDS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 5m, 90s)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"a dwell cannot be negative: {text!r}")
    return seconds


def parse_circle(text: str) -> zpb.Circle:
    """`LAT,LON,RADIUS_M`, e.g. `52.36,13.50,800`."""
    parts = text.split(",")
    try:
        lat, lon, radius = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a circle: {text!r} (LAT,LON,RADIUS_M, e.g. 52.36,13.50,800)"
        ) from None
    return zpb.Circle(latitude=lat, longitude=lon, radius_m=radius)


def register(commands: Any) -> None:
    zones = commands.add_parser(
        "zones", help="geofences: create, list, get, update, delete (scope zones)"
    )
    actions = zones.add_subparsers(dest="zones_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a zone (a GeoJSON polygon or a circle)")
    create.add_argument("name", help="a name for people")
    _shape_options(create, required=True)
    create.add_argument("--id", default="", help="zone id [default: chosen by the server]")
    create.add_argument("--label", action="append", default=[], help="a tag (repeatable)")
    create.add_argument(
        "--dwell", type=parse_dwell_s, default=0.0, help="inside this long: zone.dwell, e.g. 5m"
    )
    add_client_options(create)
    create.set_defaults(run=lambda a: asyncio.run(_create(a)))

    listing = actions.add_parser("list", help="zones ordered by id")
    listing.add_argument(
        "--label", action="append", default=[], help="only zones with this label (repeatable)"
    )
    add_client_options(listing)
    listing.set_defaults(run=lambda a: asyncio.run(_list(a)))

    get = actions.add_parser("get", help="one zone, with its shape")
    get.add_argument("id")
    add_client_options(get)
    get.set_defaults(run=lambda a: asyncio.run(_get(a)))

    update = actions.add_parser("update", help="change a zone's name, shape, labels or dwell")
    update.add_argument("id")
    update.add_argument("--name", help="a new name")
    _shape_options(update, required=False)
    update.add_argument(
        "--label", action="append", default=None, help="replace the labels (repeatable)"
    )
    update.add_argument("--dwell", type=parse_dwell_s, default=None, help="e.g. 5m; 0: none")
    update.add_argument(
        "--version", type=int, default=0, help="apply only to this version [default: as read]"
    )
    add_client_options(update)
    update.set_defaults(run=lambda a: asyncio.run(_update(a)))

    delete = actions.add_parser("delete", help="delete a zone (drivers inside get zone.exit)")
    delete.add_argument("id")
    delete.add_argument("--version", type=int, default=0, help="only if at this version")
    add_client_options(delete)
    delete.set_defaults(run=lambda a: asyncio.run(_delete(a)))

    events = commands.add_parser(
        "events",
        help="the event log: zone.enter/exit/dwell, driver.* (scope events)",
        description="Print the retained event log after --after (all of it by default) and "
        "exit; with --follow, go on printing events as they are logged (without --after: "
        "only new ones). Resume with --after and the last id printed.",
    )
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--after", type=int, default=None, metavar="ID", help="events after id")
    events.add_argument(
        "--type", action="append", default=[], help="type or glob, e.g. zone.* (repeatable)"
    )
    events.add_argument("--zone", action="append", default=[], help="zone id (repeatable)")
    events.add_argument("--driver", action="append", default=[], help="driver id (repeatable)")
    add_client_options(events)
    events.set_defaults(run=lambda a: asyncio.run(_events(a)))


def _shape_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    shape = parser.add_mutually_exclusive_group(required=required)
    shape.add_argument(
        "--geojson", metavar="FILE", help="a GeoJSON Polygon/MultiPolygon file, - for stdin"
    )
    shape.add_argument(
        "--circle", type=parse_circle, metavar="LAT,LON,RADIUS_M", help="e.g. 52.36,13.50,800"
    )


def _apply_shape(zone: zpb.Zone, args: argparse.Namespace) -> None:
    if args.geojson is not None:
        if args.geojson == "-":
            zone.geojson = sys.stdin.read()
        else:
            try:
                with open(args.geojson, encoding="utf-8") as f:
                    zone.geojson = f.read()
            except OSError as exc:
                raise SystemExit(f"driver-service: cannot read {args.geojson}: {exc}") from None
    elif args.circle is not None:
        zone.circle.CopyFrom(args.circle)


def _set_dwell(zone: zpb.Zone, seconds: float) -> None:
    zone.ClearField("dwell")
    if seconds:
        zone.dwell.FromNanoseconds(int(seconds * 1e9))


def zone_record(zone: zpb.Zone) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": zone.id,
        "name": zone.name,
        "labels": list(zone.labels),
        "version": zone.version,
        "dwell_s": zone.dwell.ToNanoseconds() / 1e9,
        "created_at": utc_from_ns(timestamp_to_ns(zone.created_at)),
        "updated_at": utc_from_ns(timestamp_to_ns(zone.updated_at)),
    }
    if zone.WhichOneof("shape") == "circle":
        c = zone.circle
        record["circle"] = {
            "latitude": c.latitude,
            "longitude": c.longitude,
            "radius_m": c.radius_m,
        }
    else:
        record["geojson"] = json.loads(zone.geojson)
    return record


def _shape_text(zone: zpb.Zone) -> str:
    if zone.WhichOneof("shape") == "circle":
        c = zone.circle
        return f"circle {c.latitude:.6f},{c.longitude:.6f} r={c.radius_m:g}m"
    return str(json.loads(zone.geojson).get("type", "geojson"))


def zone_line(zone: zpb.Zone) -> str:
    dwell = zone.dwell.ToNanoseconds() / 1e9
    parts = [
        zone.id,
        f"v{zone.version}",
        repr(zone.name),
        ",".join(zone.labels) or "-",
        _shape_text(zone),
        f"dwell={dwell:g}s" if dwell else "",
    ]
    return "  ".join(p for p in parts if p)


async def _call(args: argparse.Namespace, do: Any) -> int:
    """Run `do(stub, metadata)` on a ZoneService stub; an RPC error is printed, exit 1."""
    channel, metadata = open_channel(args)
    async with channel:
        try:
            await do(zpb_grpc.ZoneServiceStub(channel), metadata)
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)
    return 0


def _emit_zone(zone: zpb.Zone, args: argparse.Namespace) -> None:
    emit(zone_record(zone), args.json, zone_line(zone))


async def _create(args: argparse.Namespace) -> int:
    zone = zpb.Zone(id=args.id, name=args.name, labels=args.label)
    _apply_shape(zone, args)
    _set_dwell(zone, args.dwell)

    async def do(stub: zpb_grpc.ZoneServiceAsyncStub, md: Any) -> None:
        created = await stub.CreateZone(
            zpb.CreateZoneRequest(zone=zone), metadata=md, timeout=args.timeout
        )
        _emit_zone(created, args)

    return await _call(args, do)


async def _list(args: argparse.Namespace) -> int:
    async def do(stub: zpb_grpc.ZoneServiceAsyncStub, md: Any) -> None:
        token = ""
        while True:
            page = await stub.ListZones(
                zpb.ListZonesRequest(page_size=1000, page_token=token, labels=args.label),
                metadata=md,
                timeout=args.timeout,
            )
            for zone in page.zones:
                _emit_zone(zone, args)
            token = page.next_page_token
            if not token:
                return

    return await _call(args, do)


async def _get(args: argparse.Namespace) -> int:
    async def do(stub: zpb_grpc.ZoneServiceAsyncStub, md: Any) -> None:
        zone = await stub.GetZone(zpb.GetZoneRequest(id=args.id), metadata=md, timeout=args.timeout)
        if args.json:
            _emit_zone(zone, args)
        else:
            print(zone_line(zone), flush=True)
            if zone.WhichOneof("shape") == "geojson":
                print(zone.geojson, flush=True)

    return await _call(args, do)


async def _update(args: argparse.Namespace) -> int:
    async def do(stub: zpb_grpc.ZoneServiceAsyncStub, md: Any) -> None:
        zone = await stub.GetZone(zpb.GetZoneRequest(id=args.id), metadata=md, timeout=args.timeout)
        expected = args.version or zone.version  # as read: no concurrent change is overwritten
        if args.name is not None:
            zone.name = args.name
        if args.label is not None:
            del zone.labels[:]
            zone.labels.extend(args.label)
        _apply_shape(zone, args)
        if args.dwell is not None:
            _set_dwell(zone, args.dwell)
        updated = await stub.UpdateZone(
            zpb.UpdateZoneRequest(zone=zone, expected_version=expected),
            metadata=md,
            timeout=args.timeout,
        )
        _emit_zone(updated, args)

    return await _call(args, do)


async def _delete(args: argparse.Namespace) -> int:
    async def do(stub: zpb_grpc.ZoneServiceAsyncStub, md: Any) -> None:
        await stub.DeleteZone(
            zpb.DeleteZoneRequest(id=args.id, expected_version=args.version),
            metadata=md,
            timeout=args.timeout,
        )
        emit({"id": args.id, "deleted": True}, args.json, f"{args.id}  deleted")

    return await _call(args, do)


def event_line(e: epb.Event) -> str:
    at = utc_from_ns(timestamp_to_ns(e.time)).isoformat(timespec="milliseconds")
    parts = [str(e.id), at, e.type, e.driver_id]
    if e.zone_id:
        parts.append(f"zone={e.zone_id}")
    if e.type == "driver.status_changed":
        parts.append(f"{e.old_status or '-'}->{e.new_status}")
    if e.zone_deleted:
        parts.append("(zone deleted)")
    if e.HasField("location"):
        parts.append(f"at {e.location.latitude:.6f},{e.location.longitude:.6f}")
    return "  ".join(parts)


async def _events(args: argparse.Namespace) -> int:
    request = epb.WatchEventsRequest(
        types=args.type, zone_ids=args.zone, driver_ids=args.driver, replay_only=not args.follow
    )
    if args.after is not None:
        request.after_id = args.after
    elif not args.follow:
        request.after_id = 0  # the whole retained log
    channel, metadata = open_channel(args)
    async with channel:
        stub = epb_grpc.EventServiceStub(channel)
        # A deadline only for a replay: a follow runs until interrupted.
        timeout = None if args.follow else max(args.timeout, 60.0)
        try:
            async for event in stub.WatchEvents(request, metadata=metadata, timeout=timeout):
                if args.json:
                    record = json_format.MessageToDict(event)
                    print(json.dumps(record, separators=(",", ":")), flush=True)
                else:
                    print(event_line(event), flush=True)
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)
    return 0
