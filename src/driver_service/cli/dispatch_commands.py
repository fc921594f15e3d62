"""Dispatch commands: `nearby LAT LON --radius 2km`, `offer DRIVER --pickup "…"`."""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.cli._client import add_client_options, client_settings
from driver_service.cli._output import emit, fail
from driver_service.client import ClientConfigError, channel_options, from_rpc_error, utc_from_ns
from driver_service.wire import timestamp_to_ns

_DISTANCE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(km|m)?\s*$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_distance_m(text: str) -> float:
    """`2km`, `500m`, `750` (metres)."""
    match = _DISTANCE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a distance: {text!r} (e.g. 2km, 500m)")
    return float(match.group(1)) * (1000.0 if match.group(2) == "km" else 1.0)


def parse_duration_s(text: str) -> float:
    """`30s`, `2m`, `500ms`, `10` (seconds)."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2m)")
    return float(match.group(1)) * _SECONDS[match.group(2) or "s"]


def _duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def _channel(args: argparse.Namespace) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """A channel and call metadata from the common client options (as make_client builds)."""
    settings = client_settings(args)
    options = channel_options()
    try:
        credentials = settings.credentials()
    except ClientConfigError as exc:
        raise SystemExit(f"driver-service: {exc}") from None
    if credentials is not None:
        channel = grpc.aio.secure_channel(args.target, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(args.target, options=options)
    return channel, settings.metadata()


def register(commands: Any) -> None:
    nearby = commands.add_parser("nearby", help="drivers near a point, nearest first")
    nearby.add_argument("latitude", type=float)
    nearby.add_argument("longitude", type=float)
    nearby.add_argument(
        "--radius", type=parse_distance_m, default=2000.0, help="e.g. 2km, 500m [default 2km]"
    )
    nearby.add_argument("--limit", type=int, default=0, help="at most this many [default 50]")
    nearby.add_argument(
        "--status",
        action="append",
        choices=["AVAILABLE", "BUSY"],
        help="statuses to include (repeatable) [default AVAILABLE]",
    )
    nearby.add_argument(
        "--max-age", type=parse_duration_s, default=None, help="only drivers seen within, e.g. 30s"
    )
    add_client_options(nearby)
    nearby.set_defaults(run=lambda a: asyncio.run(_nearby(a)))

    offer = commands.add_parser("offer", help="send a ride offer to a driver")
    offer.add_argument("driver_id")
    offer.add_argument("--pickup", required=True, help="pickup address shown to the driver")
    offer.add_argument("--offer-id", default="", help="[default: chosen by the server]")
    offer.add_argument(
        "--ttl", type=parse_duration_s, default=30.0, help="how long it may wait [default 30s]"
    )
    offer.add_argument(
        "--wait", action="store_true", help="wait for the driver's answer (or the ttl)"
    )
    add_client_options(offer)
    offer.set_defaults(run=lambda a: asyncio.run(_offer(a)))


async def _nearby(args: argparse.Namespace) -> int:
    channel, metadata = _channel(args)
    async with channel:
        stub = dpb_grpc.DispatchServiceStub(channel)
        request = dpb.FindNearbyDriversRequest(
            latitude=args.latitude,
            longitude=args.longitude,
            radius_m=args.radius,
            limit=args.limit,
            statuses=args.status or [],
        )
        if args.max_age is not None:
            request.max_age.CopyFrom(_duration(args.max_age))
        try:
            reply = await stub.FindNearbyDrivers(request, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)
    if args.json:
        for d in reply.drivers:
            emit(_nearby_record(d), as_json=True, text="")
    else:
        print_table([_nearby_row(d) for d in reply.drivers], NEARBY_HEADER)
    return 0


NEARBY_HEADER = ("DRIVER", "STATUS", "DISTANCE", "LATITUDE", "LONGITUDE", "LAST SEEN")
#: Columns aligned to the right (numbers); the others to the left.
_RIGHT = frozenset({"DISTANCE", "LATITUDE", "LONGITUDE"})


def _nearby_record(d: dpb.NearbyDriver) -> dict[str, object]:
    return {
        "driver_id": d.driver_id,
        "status": d.status,
        "latitude": d.latitude,
        "longitude": d.longitude,
        "distance_m": round(d.distance_m, 1),
        "last_seen_at": utc_from_ns(timestamp_to_ns(d.last_seen_at)),
    }


def _nearby_row(d: dpb.NearbyDriver) -> tuple[str, ...]:
    seen = utc_from_ns(timestamp_to_ns(d.last_seen_at))
    return (
        d.driver_id,
        d.status,
        f"{d.distance_m:.0f} m",
        f"{d.latitude:.6f}",
        f"{d.longitude:.6f}",
        seen.isoformat(timespec="seconds"),
    )


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """Columns as wide as their widest cell, whatever the ids and signs: a table that lines
    up for any data (a header only when there are rows)."""
    if not rows:
        return
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if name in _RIGHT else cell.ljust(width)
            for cell, width, name in zip(row, widths, header, strict=True)
        ]
        print("  ".join(cells).rstrip(), flush=True)


async def _offer(args: argparse.Namespace) -> int:
    channel, metadata = _channel(args)
    async with channel:
        stub = dpb_grpc.DispatchServiceStub(channel)
        request = dpb.SendCommandRequest(
            driver_id=args.driver_id,
            command=pb.ServerCommand(
                ride_offer=pb.RideOffer(offer_id=args.offer_id, pickup_address=args.pickup)
            ),
            ttl=_duration(args.ttl),
        )
        try:
            sent = await stub.SendCommand(request, metadata=metadata, timeout=args.timeout)
            state = dpb.CommandState.Name(sent.state)
            if args.wait:
                final = await stub.GetCommandStatus(
                    dpb.GetCommandStatusRequest(command_id=sent.command_id, wait_for_outcome=True),
                    metadata=metadata,
                    timeout=args.ttl + args.timeout,
                )
                state = dpb.CommandState.Name(final.state)
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)
    state = state.removeprefix("COMMAND_STATE_")
    emit(
        {"offer_id": sent.command_id, "driver_id": args.driver_id, "state": state},
        args.json,
        f"{sent.command_id}  {args.driver_id}  {state}",
    )
    return 0
