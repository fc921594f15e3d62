"""`driver-service session`: act as one driver over a DriverSession, typing (or piping) commands.

Commands, one per line on stdin:

    ping                           round trip and server time
    status AVAILABLE|BUSY|OFFLINE  change availability (the server validates it)
    loc LAT LON [SPEED HEADING]    send a GPS fix stamped now
    accept [OFFER_ID]              accept a ride offer (default: the last one received)
    decline [OFFER_ID]             decline a ride offer (default: the last one received)
    quit                           close the session (so does end of input)

Server commands (ride offers, navigation) are printed as they arrive; an answered offer
prints its new state (ACCEPTED, DECLINED, or EXPIRED when it was too late). Exit codes: 0 after a
clean close, 1 if the server ended the session with an error (e.g. INVALID_ARGUMENT for a bad
status), 2 if a line of input was not understood (the session still closes cleanly).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.cli._client import add_client_options, make_client
from driver_service.cli._output import emit, fail
from driver_service.client import DriverClient, DriverServiceError, DriverSession
from driver_service.domain import InvalidInput, Location, validate_location

EXIT_BAD_INPUT = 2
#: How long a failed write waits for the server's own reason to arrive on the read side.
REASON_WAIT_S = 1.0
#: What grpc.aio reports when a write fails because the call has just ended.
GRPC_WRITE_RACE = "Internal error from Core"
USAGE = (
    "commands: ping | status AVAILABLE|BUSY|OFFLINE | loc LAT LON [SPEED HEADING] | "
    "accept [OFFER] | decline [OFFER] | quit"
)


class BadCommand(Exception):
    """A line of input the session cannot act on; the session goes on."""


class Offers:
    """Ride offers received on this session, so `accept` alone answers the latest."""

    def __init__(self) -> None:
        self.latest: str | None = None


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "session",
        help="be a driver: send pings, statuses and fixes typed on stdin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("driver_id", metavar="DRIVER_ID")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=0.0,
        metavar="S",
        help="send a ping every S seconds without printing it (0: only on `ping`) [default 0]",
    )
    add_client_options(parser)
    parser.set_defaults(run=lambda a: asyncio.run(_session(a)))


def stdin_lines(stream: TextIO) -> asyncio.Queue[str | None]:
    """Lines of `stream` (None at the end), read by a daemon thread: blocking reads of a
    terminal, pipe or file all work, and an interrupted session does not wait for Enter."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the session is over
            # Unreadable input (closed, not text) ends the session like end of input.
            with contextlib.suppress(OSError, ValueError):
                for line in stream:
                    loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


async def _session(args: argparse.Namespace) -> int:
    async with make_client(args) as client:
        session = await client.session()
        if sys.stdin.isatty() and not args.json:
            print(f"session open for {args.driver_id}; {USAGE}", flush=True)
        offers = Offers()
        shown = asyncio.create_task(_show_commands(session, args.json, offers))
        beats = (
            asyncio.create_task(_heartbeats(session, args.heartbeat_interval, args.timeout))
            if args.heartbeat_interval > 0
            else None
        )
        try:
            return await _drive(args, client, session, shown, offers)
        finally:
            if beats is not None:
                beats.cancel()
            shown.cancel()


async def _drive(
    args: argparse.Namespace,
    client: DriverClient,
    session: DriverSession,
    shown: asyncio.Task[DriverServiceError | None],
    offers: Offers,
) -> int:
    lines = stdin_lines(sys.stdin)
    bad_input = False
    try:
        while True:
            next_line = asyncio.ensure_future(lines.get())
            await asyncio.wait({next_line, shown}, return_when=asyncio.FIRST_COMPLETED)
            if not next_line.done():
                next_line.cancel()
                ended = shown.result()
                if ended is not None:
                    return fail(await server_status(session, ended), args.json)
                print("error: the server ended the session", file=sys.stderr)
                return 1
            line = next_line.result()
            if line is None:
                break
            words = line.split()
            if not words:
                continue
            if words[0].lower() in {"quit", "exit"}:
                break
            try:
                if words[0].lower() in {"accept", "decline"}:
                    await _answer(args, client, offers, words)
                else:
                    await _command(args, session, words)
            except BadCommand as exc:
                bad_input = True
                print(f"error: {exc}", file=sys.stderr, flush=True)
        await session.close()
    except DriverServiceError as error:
        return fail(await _reason(session, shown, error), args.json)
    except asyncio.CancelledError:
        # Ctrl-C: still end the session properly so the server sees a clean close.
        with contextlib.suppress(DriverServiceError):
            await asyncio.wait_for(session.close(), args.timeout)
        raise
    ended = await shown
    if ended is not None:
        return fail(await server_status(session, ended), args.json)
    return EXIT_BAD_INPUT if bad_input else 0


async def _reason(
    session: DriverSession,
    shown: asyncio.Task[DriverServiceError | None],
    error: DriverServiceError,
) -> DriverServiceError:
    """Why the session failed. A write after the server ended the call fails with a vague
    error ("already ended"); the server's status (e.g. INVALID_ARGUMENT for a bad status)
    arrives on the read side, which finishes at once when the call is over."""
    try:
        ended = await asyncio.wait_for(asyncio.shield(shown), REASON_WAIT_S)
    except TimeoutError:
        return error
    return await server_status(session, ended or error)


async def server_status(session: DriverSession, error: DriverServiceError) -> DriverServiceError:
    """The server's reason for ending the session, once the client has settled it."""
    return session.error or error


async def _command(args: argparse.Namespace, session: DriverSession, words: list[str]) -> None:
    verb, rest = words[0].lower(), words[1:]
    if verb == "ping":
        if rest:
            raise BadCommand("usage: ping")
        server_ms, round_trip_s = await session.heartbeat(timeout=args.timeout)
        at = datetime.fromtimestamp(server_ms / 1000, tz=UTC)
        emit(
            {"event": "pong", "round_trip_ms": round(round_trip_s * 1000, 3), "server_time": at},
            args.json,
            f"pong  {round_trip_s * 1000:.1f} ms  server time {at.isoformat()}",
        )
    elif verb == "status":
        if len(rest) != 1:
            raise BadCommand("usage: status AVAILABLE|BUSY|OFFLINE")
        # No reply comes for a status: a rejected one ends the session, reported then.
        await session.change_status(args.driver_id, rest[0])
        emit({"event": "status_sent", "status": rest[0]}, args.json, f"status {rest[0]} sent")
    elif verb == "loc":
        fix = _location(args.driver_id, rest)
        await session.send_location(fix)
        emit(
            {"event": "location_sent", "latitude": fix.latitude, "longitude": fix.longitude},
            args.json,
            f"location {fix.latitude:.6f},{fix.longitude:.6f} sent",
        )
    else:
        raise BadCommand(f"unknown command {verb!r}; {USAGE}")


async def _answer(
    args: argparse.Namespace, client: DriverClient, offers: Offers, words: list[str]
) -> None:
    """Accept or decline a ride offer (AnswerOffer, as the driver app does). A refused answer
    (unknown offer, not this driver's, already answered) is reported; the session goes on."""
    verb, rest = words[0].lower(), words[1:]
    if len(rest) > 1:
        raise BadCommand(f"usage: {verb} [OFFER_ID]")
    offer_id = rest[0] if rest else offers.latest
    if offer_id is None:
        raise BadCommand(f"no ride offer received yet; usage: {verb} [OFFER_ID]")
    try:
        state = await client.answer_offer(offer_id, args.driver_id, verb == "accept")
    except DriverServiceError as error:
        raise BadCommand(f"{verb} {offer_id}: {error.code.name}: {error.details}") from None
    emit(
        {"event": "offer_answered", "offer_id": offer_id, "state": state},
        args.json,
        f"offer {offer_id}: {state}",
    )


def _location(driver_id: str, rest: list[str]) -> Location:
    """Check a fix here: the server drops an invalid one silently inside a session."""
    if len(rest) not in {2, 4}:
        raise BadCommand("usage: loc LAT LON [SPEED HEADING]")
    try:
        numbers = [float(word) for word in rest]
    except ValueError:
        raise BadCommand("usage: loc LAT LON [SPEED HEADING] (numbers)") from None
    lat, lon = numbers[0], numbers[1]
    speed, heading = (numbers[2], numbers[3]) if len(numbers) == 4 else (0.0, 0.0)
    now = time.time_ns()
    try:
        return validate_location(driver_id, lat, lon, speed, heading, now, now)
    except InvalidInput as exc:
        raise BadCommand(str(exc)) from None


async def _show_commands(
    session: DriverSession, as_json: bool, offers: Offers
) -> DriverServiceError | None:
    """Print what the server pushes; return the error that ended the session, if any."""
    try:
        async for command in session.commands():
            if command.WhichOneof("command") == "ride_offer":
                offers.latest = command.ride_offer.offer_id
            print_server_command(command, as_json)
    except DriverServiceError as error:
        return error
    return None


def print_server_command(command: pb.ServerCommand, as_json: bool, prefix: str = "") -> None:
    kind = command.WhichOneof("command")
    if kind == "ride_offer":
        offer = command.ride_offer
        emit(
            {"event": "ride_offer", "offer_id": offer.offer_id, "pickup": offer.pickup_address},
            as_json,
            f"{prefix}ride offer {offer.offer_id}: pickup at {offer.pickup_address} "
            "(accept | decline)",
        )
    elif kind == "navigation":
        emit(
            {"event": "navigation", "polyline": command.navigation.polyline},
            as_json,
            f"{prefix}navigation: {command.navigation.polyline}",
        )
    else:
        emit({"event": str(kind)}, as_json, f"{prefix}server command: {kind}")


async def _heartbeats(session: DriverSession, interval_s: float, timeout_s: float) -> None:
    """Keep the session visibly alive; a failure ends the session, which is reported there."""
    with contextlib.suppress(DriverServiceError):
        while True:
            await asyncio.sleep(interval_s)
            await session.heartbeat(timeout=timeout_s)
