"""Printing results for people (aligned text) or for scripts (`--json`, one object per line)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from driver_service.client import DriverServiceError


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def emit(record: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps({k: _plain(v) for k, v in record.items()}), flush=True)
    else:
        print(text, flush=True)


def fail(error: DriverServiceError, as_json: bool) -> int:
    """Report a failed call on stderr; exit code 1."""
    if as_json:
        record = {"error": error.code.name, "details": error.details}
        if error.hint:
            record["hint"] = error.hint
        print(json.dumps(record), file=sys.stderr)
    else:
        print(f"error: {error.code.name}: {error.hint or error.details}", file=sys.stderr)
    return 1
