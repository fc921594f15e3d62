"""Read a SQLite store's history the way another process would: only committed rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def committed_history(db: Path) -> list[tuple[str, int]]:
    """(driver_id, recorded_at_ns) of every committed history row, sorted."""
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT driver_id, recorded_at_ns FROM location_history ORDER BY 1, 2"
        ).fetchall()
    finally:
        con.close()
