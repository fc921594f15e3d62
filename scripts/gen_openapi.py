"""Write docs/openapi.json from the running code's document (`make openapi`); a test
asserts that the served document and this file are identical."""

from __future__ import annotations

import json
from pathlib import Path

from driver_service.http.openapi import document

OUT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"

if __name__ == "__main__":
    OUT.write_text(json.dumps(document(), indent=2, sort_keys=False) + "\n")
    print(f"wrote {OUT}")
