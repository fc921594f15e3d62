"""Generate Python code and typed stubs from proto/ into src/driver_service/_gen.

protoc names generated modules after the proto path (``driver.v1``); we rewrite those
imports to live under ``driver_service._gen`` so the package is importable without
putting ``_gen`` on ``sys.path``, while the registered file names stay the seed's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "driver_service._gen"
IMPORT_RE = re.compile(r"^(from|import) (driver\.v1)\b", re.MULTILINE)


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    # protoc finds the mypy-protobuf plugins on PATH: use the ones beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(tmp, out_dir)
    for path in sorted(out_dir.rglob("*")):
        if path.suffix in {".py", ".pyi"}:
            text = IMPORT_RE.sub(lambda m: f"{m.group(1)} {PACKAGE}.{m.group(2)}", path.read_text())
            path.write_text(text)
    for directory in [out_dir, *sorted(p for p in out_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "driver_service" / "_gen")
    generate(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
