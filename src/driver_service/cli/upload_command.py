"""`driver-service upload`: send a file of GPS fixes, or a simulated route, in one stream.

The whole file is parsed and validated first, so a bad line stops the upload (exit 2, naming
the line) before anything reaches the server.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import math
import random
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from driver_service.cli import routes
from driver_service.cli._client import add_client_options, make_client
from driver_service.cli._output import emit, fail
from driver_service.client import DriverServiceError
from driver_service.domain import InvalidInput, Location, validate_location

FIELDS = ("latitude", "longitude", "speed_mps", "heading_degrees", "timestamp")
OPTIONAL_FIELDS = ("driver_id",)
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
EXIT_BAD_INPUT = 2
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadLine(Exception):
    """One input line cannot be uploaded; `line` is 1-based, as editors count."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "upload",
        help="upload GPS fixes from a CSV / JSON-lines file, or a simulated route",
        description=(
            "Upload locations in one UploadLocations stream. Files have the columns (CSV "
            "header) or keys (JSON lines) driver_id (optional, defaults to DRIVER_ID), "
            "latitude, longitude, speed_mps, heading_degrees, timestamp (ISO-8601 with a "
            "time zone, or epoch seconds)."
        ),
    )
    parser.add_argument("driver_id", metavar="DRIVER_ID")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, metavar="PATH", help="CSV or JSON-lines file")
    source.add_argument("--route", action="store_true", help="upload a simulated drive ending now")
    parser.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        help="file format [default: from the extension .csv, .jsonl or .ndjson]",
    )
    parser.add_argument(
        "--points", type=int, default=60, help="--route: number of fixes [default 60]"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="--route: seconds between fixes [default 1]"
    )
    parser.add_argument("--seed", type=int, help="--route: random seed, for a repeatable route")
    add_client_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        locations = _load(args)
    except (BadLine, InputError) as exc:
        where = f"{args.file}: " if args.file is not None else ""
        print(f"driver-service upload: {where}{exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return asyncio.run(_upload(args, locations))


class InputError(Exception):
    """The input as a whole is unusable (missing file, unknown format, no rows)."""


def _load(args: argparse.Namespace) -> list[Location]:
    if args.route:
        if args.points <= 0:
            raise InputError("--points must be at least 1")
        if not (math.isfinite(args.interval) and args.interval > 0):
            raise InputError("--interval must be a positive number of seconds")
        rng = random.Random(args.seed)
        return [
            Location(
                args.driver_id,
                p.latitude,
                p.longitude,
                p.speed_mps,
                p.heading_degrees,
                p.recorded_at_ns,
            )
            for p in routes.simulated_route(args.points, args.interval, time.time_ns(), rng)
        ]
    path: Path = args.file
    fmt = args.format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot tell the format from {path.suffix or 'no extension'!r}; "
            "use .csv, .jsonl or .ndjson, or --format"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the file: {exc}") from None
    locations = (
        parse_csv(text, args.driver_id) if fmt == "csv" else parse_jsonl(text, args.driver_id)
    )
    if not locations:
        raise InputError("no locations in the file")
    return locations


def parse_csv(text: str, default_driver_id: str, now_ns: int | None = None) -> list[Location]:
    """Rows of a CSV with a header line; raise BadLine for the first unusable line."""
    now = time.time_ns() if now_ns is None else now_ns
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return []
    except csv.Error as exc:
        raise BadLine(1, f"unreadable CSV header: {exc}") from None
    _check_columns(header, 1)
    locations: list[Location] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise BadLine(line, f"expected {len(header)} columns, found {len(row)}")
            locations.append(
                _location(dict(zip(header, row, strict=True)), default_driver_id, line, now)
            )
    except csv.Error as exc:
        raise BadLine(reader.line_num, f"unreadable CSV: {exc}") from None
    return locations


def parse_jsonl(text: str, default_driver_id: str, now_ns: int | None = None) -> list[Location]:
    """One JSON object per line (blank lines skipped); raise BadLine for the first bad one."""
    now = time.time_ns() if now_ns is None else now_ns
    locations: list[Location] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadLine(line, f"not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise BadLine(line, "expected a JSON object")
        _check_columns(list(record), line)
        locations.append(_location(record, default_driver_id, line, now))
    return locations


def _check_columns(names: list[str], line: int) -> None:
    unknown = [n for n in names if n not in FIELDS and n not in OPTIONAL_FIELDS]
    if unknown:
        raise BadLine(line, f"unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [f for f in FIELDS if f not in names]
    if missing:
        raise BadLine(line, f"missing field(s) {', '.join(missing)}")


def _location(record: dict[str, Any], default_driver_id: str, line: int, now_ns: int) -> Location:
    driver_id = record.get("driver_id")
    if driver_id is None or (isinstance(driver_id, str) and not driver_id.strip()):
        driver_id = default_driver_id
    if not isinstance(driver_id, str):
        raise BadLine(line, "driver_id must be a string")
    lat, lon, speed, heading = (_number(record[name], name, line) for name in FIELDS[:4])
    at_ns = _timestamp_ns(record["timestamp"], line)
    try:
        return validate_location(driver_id.strip(), lat, lon, speed, heading, at_ns, now_ns)
    except InvalidInput as exc:
        raise BadLine(line, str(exc)) from None


def _number(value: Any, name: str, line: int) -> float:
    if isinstance(value, bool):
        raise BadLine(line, f"{name} must be a number, not {json.dumps(value)}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise BadLine(line, f"{name} must be a number, got {str(value)[:40]!r}")


def _timestamp_ns(value: Any, line: int) -> int:
    """ISO-8601 with a zone (e.g. 2024-05-01T12:00:00Z) or epoch seconds (may be fractional)."""
    if isinstance(value, bool) or value is None:
        raise BadLine(line, "timestamp is required")
    text = str(value).strip()
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        pass
    else:
        if not seconds.is_finite():
            raise BadLine(line, f"timestamp {text!r} is not a time")
        return int(seconds * 1_000_000_000)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise BadLine(
            line, f"timestamp {text[:40]!r} is neither ISO-8601 nor epoch seconds"
        ) from None
    if at.tzinfo is None:
        raise BadLine(line, f"timestamp {text!r} has no time zone; add Z or +00:00")
    delta = at - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


async def _upload(args: argparse.Namespace, locations: list[Location]) -> int:
    async with make_client(args) as client:
        try:
            report = await client.upload(locations)
        except DriverServiceError as error:
            return fail(error, args.json)
    emit(
        {
            "driver_id": args.driver_id,
            "received_count": report.received_count,
            "persisted_count": report.persisted_count,
            "session_id": report.session_id,
        },
        args.json,
        f"received {report.received_count}, persisted {report.persisted_count}  "
        f"(session {report.session_id})",
    )
    if report.persisted_count < len(locations):
        print(
            f"driver-service upload: only {report.persisted_count} of {len(locations)} "
            "locations were stored",
            file=sys.stderr,
        )
        return 1
    return 0
