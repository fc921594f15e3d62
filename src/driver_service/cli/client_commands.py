"""Client commands: `get`, `watch` (upload, session, simulate and the dispatch commands have
their own modules; the options they share are in cli/_client.py)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from driver_service.cli._client import add_client_options, make_client
from driver_service.cli._output import emit, fail
from driver_service.client import DriverServiceError, utc_from_ns


def register(commands: Any) -> None:
    get = commands.add_parser("get", help="show a driver's status and position")
    get.add_argument("driver_id")
    add_client_options(get)
    get.set_defaults(run=lambda a: asyncio.run(_get(a)))

    watch = commands.add_parser("watch", help="follow a driver's live location (Ctrl-C to stop)")
    watch.add_argument("driver_id")
    watch.add_argument(
        "--count", type=int, default=0, help="stop after this many locations (0: until interrupted)"
    )
    add_client_options(watch)
    watch.set_defaults(run=lambda a: asyncio.run(_watch(a)))


async def _get(args: argparse.Namespace) -> int:
    async with make_client(args) as client:
        try:
            d = await client.get_driver(args.driver_id)
        except DriverServiceError as error:
            return fail(error, args.json)
    emit(
        {
            "driver_id": d.driver_id,
            "status": d.status,
            "latitude": d.latitude,
            "longitude": d.longitude,
            "last_seen_at": d.last_seen_at,
        },
        args.json,
        f"{d.driver_id}  {d.status:<9}  {d.latitude:.6f},{d.longitude:.6f}  "
        f"last seen {d.last_seen_at.isoformat()}",
    )
    return 0


async def _watch(args: argparse.Namespace) -> int:
    seen = 0
    async with make_client(args) as client:
        try:
            async for loc in client.watch(args.driver_id):
                at = utc_from_ns(loc.recorded_at_ns)
                emit(
                    {
                        "driver_id": loc.driver_id,
                        "latitude": loc.latitude,
                        "longitude": loc.longitude,
                        "speed_mps": loc.speed_mps,
                        "heading_degrees": loc.heading_degrees,
                        "timestamp": at,
                    },
                    args.json,
                    f"{at.isoformat()}  {loc.latitude:.6f},{loc.longitude:.6f}  "
                    f"{loc.speed_mps:5.1f} m/s  {loc.heading_degrees:5.1f}°",
                )
                seen += 1
                if args.count and seen >= args.count:
                    break
        except DriverServiceError as error:
            return fail(error, args.json)
    return 0
