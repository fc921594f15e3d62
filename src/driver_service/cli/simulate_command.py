"""`driver-service simulate`: a fleet of simulated drivers from one process, for load and demos.

Each driver is an asyncio task with its own DriverSession, driving a plausible route
(`routes.py`) and now and then switching between AVAILABLE and BUSY. `--rate` is the total
number of location updates per second across the fleet (not per driver): each driver sends
every drivers/rate seconds, the drivers' ticks spread evenly over that interval so the server
sees a steady stream rather than bursts. Stops after `--duration` or on Ctrl-C / SIGTERM,
closing every session cleanly, then prints a summary (text, or one JSON object with
`--json`). On a terminal a progress line (elapsed, sent, rate, errors) is redrawn while it
runs. Exit code 0 if nothing failed, 1 if any call failed, 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.cli import routes
from driver_service.cli._client import add_client_options, make_client
from driver_service.cli._output import emit
from driver_service.client import DriverClient, DriverServiceError, DriverSession
from driver_service.domain import InvalidInput, Status, new_location, validate_driver_id

EXIT_BAD_OPTIONS = 2
#: Each driver changes status about once a minute: a ride taken, a ride finished.
STATUS_CHANGES_PER_S = 1 / 60
#: After a failed call a driver waits this long before opening a new session.
RECONNECT_DELAY_S = 1.0
PROGRESS_EVERY_S = 0.5


class OfferDecision(enum.Enum):
    ACCEPT = "accept"
    DECLINE = "decline"


#: Decides what a simulated driver does with a ride offer.
OfferPolicy = Callable[[str, pb.RideOffer], OfferDecision]


def accept_with_probability(rate: float, rng: random.Random) -> OfferPolicy:
    """Drivers accept a share `rate` of their offers, at random, and decline the rest."""

    def decide(driver_id: str, offer: pb.RideOffer) -> OfferDecision:
        return OfferDecision.ACCEPT if rng.random() < rate else OfferDecision.DECLINE

    return decide


@dataclass(slots=True)
class Stats:
    sent: int = 0
    errors: int = 0
    status_changes: int = 0
    offers: int = 0

    @property
    def ride_offers_text(self) -> str:
        return f"{self.offers} ride offer{'' if self.offers == 1 else 's'}"


@dataclass(slots=True)
class Fleet:
    """What every driver task shares: schedule, stop signal, counters, output."""

    client: DriverClient
    driver_ids: list[str]
    rngs: list[random.Random]
    interval_s: float
    start: float
    end: float
    stop: asyncio.Future[None]
    centre: tuple[float, float]
    as_json: bool
    live: bool
    close_timeout_s: float
    policy: OfferPolicy
    stats: Stats = field(default_factory=Stats)
    answers: set[asyncio.Task[None]] = field(default_factory=set)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "simulate",
        help="drive a fleet of simulated drivers (load and demos)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--drivers", type=int, default=10, help="fleet size [default 10]")
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="location updates per second, in total across the fleet [default 10]",
    )
    parser.add_argument(
        "--duration", type=float, help="stop after this many seconds [default: until Ctrl-C]"
    )
    parser.add_argument("--id-prefix", default="sim-", help="driver ids are PREFIX1..PREFIXN")
    parser.add_argument("--seed", type=int, help="random seed, for repeatable routes")
    parser.add_argument(
        "--accept-rate",
        type=float,
        default=0.8,
        help="share of ride offers drivers accept (AnswerOffer); the rest they decline "
        "[default 0.8]",
    )
    parser.add_argument(
        "--centre",
        default=f"{routes.BERLIN[0]},{routes.BERLIN[1]}",
        metavar="LAT,LON",
        help="drivers start within a few km of here [default Berlin]",
    )
    add_client_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        centre = _check(args)
    except ValueError as exc:
        print(f"driver-service simulate: {exc}", file=sys.stderr)
        return EXIT_BAD_OPTIONS
    return asyncio.run(simulate(args, centre))


def _check(args: argparse.Namespace) -> tuple[float, float]:
    if args.drivers < 1:
        raise ValueError("--drivers must be at least 1")
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise ValueError("--rate must be a positive number")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise ValueError("--duration must be a positive number of seconds")
    try:
        validate_driver_id(f"{args.id_prefix}{args.drivers}")
    except InvalidInput as exc:
        raise ValueError(f"--id-prefix {args.id_prefix!r}: {exc}") from None
    try:
        lat_text, lon_text = args.centre.split(",")
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        raise ValueError(f"--centre {args.centre!r} is not LAT,LON") from None
    if not (-80.0 <= lat <= 80.0 and -180.0 <= lon <= 180.0):
        raise ValueError("--centre must be within latitude ±80 and longitude ±180")
    return lat, lon


async def simulate(args: argparse.Namespace, centre: tuple[float, float]) -> int:
    loop = asyncio.get_running_loop()
    master = random.Random(args.seed)
    ids = [f"{args.id_prefix}{i + 1}" for i in range(args.drivers)]
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop)
    try:
        async with make_client(args) as client:
            start = loop.time()
            fleet = Fleet(
                client=client,
                driver_ids=ids,
                rngs=[random.Random(master.getrandbits(64)) for _ in ids],
                interval_s=args.drivers / args.rate,
                start=start,
                end=start + args.duration if args.duration is not None else math.inf,
                stop=stop,
                centre=centre,
                as_json=args.json,
                live=sys.stdout.isatty() and not args.json,
                close_timeout_s=args.timeout,
                policy=accept_with_probability(
                    args.accept_rate, random.Random(master.getrandbits(64))
                ),
            )
            drivers = [asyncio.create_task(drive(fleet, i)) for i in range(len(ids))]
            progress = asyncio.create_task(_progress(fleet, args.duration)) if fleet.live else None
            await asyncio.wait((stop,), timeout=None if math.isinf(fleet.end) else args.duration)
            request_stop()
            elapsed = min(loop.time(), fleet.end) - start
            await asyncio.gather(*drivers)
            if progress is not None:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    _summary(fleet, elapsed, len(ids))
    return 1 if fleet.stats.errors else 0


async def drive(fleet: Fleet, index: int) -> None:
    """One driver: tick every `interval_s` at its own offset, one session, reconnect on errors."""
    loop = asyncio.get_running_loop()
    driver_id, rng, stats = fleet.driver_ids[index], fleet.rngs[index], fleet.stats
    change_chance = min(0.5, STATUS_CHANGES_PER_S * fleet.interval_s)
    # Tick k is at base + k * interval: computed, not accumulated, so it never drifts.
    base = fleet.start + index * fleet.interval_s / len(fleet.driver_ids)
    tick = 0
    next_at = base
    session: DriverSession | None = None
    shown: asyncio.Task[None] | None = None
    route: routes.Drive | None = None
    status = Status.AVAILABLE
    try:
        while not fleet.stop.done() and next_at < fleet.end:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.wait((fleet.stop,), timeout=delay)
                if fleet.stop.done():
                    break
            now = loop.time()
            tick += 1
            if base + tick * fleet.interval_s < now - fleet.interval_s:
                # Far behind (an overloaded machine): skip ticks rather than burst to catch up.
                tick = math.ceil((now - base) / fleet.interval_s)
            next_at = base + tick * fleet.interval_s
            try:
                if session is None:
                    session = await fleet.client.session()
                    shown = asyncio.create_task(_show_commands(fleet, driver_id, session))
                at_ns = time.time_ns()
                route = (
                    routes.start_drive(rng, at_ns, fleet.centre)
                    if route is None
                    else routes.advance(route, at_ns, rng)
                )
                p = route.point
                await session.send_location(
                    new_location(
                        driver_id,
                        p.latitude,
                        p.longitude,
                        p.speed_mps,
                        p.heading_degrees,
                        p.recorded_at_ns,
                    )
                )
                stats.sent += 1
                if rng.random() < change_chance:
                    status = Status.BUSY if status is Status.AVAILABLE else Status.AVAILABLE
                    await session.change_status(driver_id, status.value)
                    stats.status_changes += 1
            except DriverServiceError:
                stats.errors += 1
                if shown is not None:
                    shown.cancel()
                session, shown = None, None
                retry_at = loop.time() + RECONNECT_DELAY_S
                if next_at < retry_at:
                    tick = math.ceil((retry_at - base) / fleet.interval_s)
                    next_at = base + tick * fleet.interval_s
    finally:
        if session is not None:
            await _close(fleet, session, shown)


async def _close(fleet: Fleet, session: DriverSession, shown: asyncio.Task[None] | None) -> None:
    try:
        await asyncio.wait_for(session.close(), fleet.close_timeout_s)
    except (DriverServiceError, TimeoutError):
        fleet.stats.errors += 1
    if shown is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await shown


async def _show_commands(fleet: Fleet, driver_id: str, session: DriverSession) -> None:
    """Report what the server pushes to this driver; errors surface in the driver's own calls."""
    with contextlib.suppress(DriverServiceError):
        async for command in session.commands():
            _report_command(fleet, driver_id, command)


async def _answer(fleet: Fleet, driver_id: str, offer_id: str, decision: OfferDecision) -> None:
    """Send the simulated driver's answer, as its app would (AnswerOffer)."""
    try:
        await fleet.client.answer_offer(offer_id, driver_id, decision is OfferDecision.ACCEPT)
    except DriverServiceError:
        fleet.stats.errors += 1


def _report_command(fleet: Fleet, driver_id: str, command: pb.ServerCommand) -> None:
    """Print a pushed command (above the progress line: rich redirects stdout while live)."""
    kind = command.WhichOneof("command")
    if kind == "ride_offer":
        offer = command.ride_offer
        fleet.stats.offers += 1
        decision = fleet.policy(driver_id, offer)
        answer = asyncio.get_running_loop().create_task(
            _answer(fleet, driver_id, offer.offer_id, decision)
        )
        fleet.answers.add(answer)
        answer.add_done_callback(fleet.answers.discard)
        emit(
            {
                "event": "ride_offer",
                "driver_id": driver_id,
                "offer_id": offer.offer_id,
                "pickup": offer.pickup_address,
                "decision": decision.value,
            },
            fleet.as_json,
            f"{driver_id}: ride offer {offer.offer_id}, pickup at "
            f"{offer.pickup_address} ({decision.value})",
        )
    elif kind == "navigation":
        emit(
            {
                "event": "navigation",
                "driver_id": driver_id,
                "polyline": command.navigation.polyline,
            },
            fleet.as_json,
            f"{driver_id}: navigation {command.navigation.polyline}",
        )


async def _progress(fleet: Fleet, duration_s: float | None) -> None:
    """A progress line on the terminal, redrawn in place until cancelled: a bar toward
    --duration (a pulsing one without it), elapsed time, sent, the recent rate, errors."""
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    loop = asyncio.get_running_loop()
    columns = (
        SpinnerColumn(),
        TextColumn("simulating"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("sent {task.fields[sent]:>9}  {task.fields[rate]:>8.1f}/s  "),
        TextColumn("errors {task.fields[errors]}"),
    )
    last_sent, last_t = 0, loop.time()
    with Progress(*columns, transient=True, refresh_per_second=4) as progress:
        task = progress.add_task("simulate", total=duration_s, sent=0, rate=0.0, errors=0)
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            now, stats = loop.time(), fleet.stats
            rate = (stats.sent - last_sent) / (now - last_t)
            last_sent, last_t = stats.sent, now
            progress.update(
                task,
                completed=now - fleet.start,
                sent=stats.sent,
                rate=rate,
                errors=stats.errors,
            )


def _summary(fleet: Fleet, elapsed: float, drivers: int) -> None:
    stats = fleet.stats
    rate = stats.sent / elapsed if elapsed > 0 else 0.0
    record = {
        "drivers": drivers,
        "sent": stats.sent,
        "errors": stats.errors,
        "status_changes": stats.status_changes,
        "ride_offers": stats.offers,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(rate, 1),
    }
    emit(
        record,
        fleet.as_json,
        f"{drivers} drivers: sent {stats.sent} locations in {elapsed:.1f} s "
        f"({rate:.1f}/s), {stats.status_changes} status changes, {stats.ride_offers_text}, "
        f"{stats.errors} errors",
    )
