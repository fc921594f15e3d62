"""Instructions per update of single ingest steps, in process, counted by callgrind: each step
runs twice under valgrind (with `small` and with `large` units) and the difference is divided
by the extra updates, so start-up, imports and the machine's load drop out (repeats agree
within ~1 %). The steps:

offer       the loop's work per update up to the group commit: `offer_message` on decoded
            LocationUpdates of known drivers (validation, Location, LocationWriter.submit)
            and the stream's room check (`writer.full`), no commit
location    building one Location as validation and the stores do (`new_location`)
driver      building one Driver as a commit does (`new_driver`)
sqlite      SqliteRepository.record_locations, commits of BATCH fixes of BATCH drivers that
            all advance (no event outbox), every thread
postgres    the same on PostgreSQL (client side: asyncpg on the loop), a fresh database on
            the server of --postgres (default: the local one, trust auth)
sqlite-events, postgres-events
            the same with the event outbox on, as `serve` runs (a ZoneEvaluator without
            zones: each driver's tracker state is read, evaluated and kept in every commit;
            the first pass of each driver logs its driver.online)
sqlite-new, postgres-new
            the same with every fix of a driver not seen before: each is created, logs its
            driver.online and has its first tracker state written

    python -m bench.ingest_paths [STEP ...] [--batch 1000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import FIXED_HASHES, PYTHON, ROOT

STEPS = (
    "offer",
    "location",
    "driver",
    "sqlite",
    "postgres",
    "sqlite-events",
    "postgres-events",
    "sqlite-new",
    "postgres-new",
)
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _offer(units: int) -> None:
    from bench.ingest import update
    from driver_service.api.servicer import offer_message
    from driver_service.domain.validation import validate_driver_id
    from driver_service.server.composition import build_tracking
    from driver_service.server.config import ServerSettings

    async def main() -> None:
        with tempfile.TemporaryDirectory() as data:
            tracking = await build_tracking(ServerSettings(data_dir=Path(data)))
            base = time.time_ns() - 3_600_000_000_000
            messages = [update(i, base) for i in range(10_000)]
            for message in messages:  # known ids, in both runs
                validate_driver_id(message.driver_id)
            messages = messages[:units]
            upload = tracking.new_upload()
            writer = tracking.writer
            for message in messages:
                if writer.full:
                    await writer.wait_for_room()
                offer_message(upload, message)
            os._exit(0)  # nothing committed: only the offers count

    asyncio.run(main())


def _build(kind: str, units: int) -> None:
    from driver_service.domain import Status, new_driver, new_location

    fix = new_location("d-1", 1.0, 2.0, 3.0, 4.0, 5)
    if kind == "location":
        made: list[object] = [new_location("d-1", 1.0, 2.0, 3.0, 4.0, i) for i in range(units)]
    else:
        made = [new_driver("d-1", Status.AVAILABLE, fix, i) for i in range(units)]
    del made


def _repository(step: str, commits: int, batch: int, postgres: str) -> None:
    from driver_service.app.evaluation import ZoneEvaluator
    from driver_service.domain import Location, new_location

    store, _, variant = step.partition("-")
    evaluator = ZoneEvaluator() if variant else None
    new = variant == "new"

    base = time.time_ns() - 3_600_000_000_000

    def fixes(k: int) -> list[Location]:
        return [
            new_location(  # as validation makes them
                f"drv-{k:03d}-{i:05d}" if new else f"drv-{i:05d}",
                52.3 + i / 1e5,
                13.2,
                9.5,
                float(k % 360),
                base + k * 10**9 + i,
            )
            for i in range(batch)
        ]

    async def main() -> None:
        import asyncpg  # type: ignore[import-untyped]

        name = f"bench_paths_{uuid.uuid4().hex[:12]}"
        if store == "postgres":
            from driver_service.adapters.postgres.repository import PostgresRepository

            admin = await asyncpg.connect(postgres)
            await admin.execute(f'CREATE DATABASE "{name}"')
            await admin.close()
            url = postgres.rsplit("/", 1)[0] + f"/{name}"
            # Valgrind runs ~50x slower: the default 2 s bound would cut the first commits short.
            repo = await PostgresRepository.open(
                url, max_size=2, evaluator=evaluator, timeout_s=120.0
            )
        else:
            from driver_service.adapters.sqlite.repository import SqliteRepository

            data = tempfile.mkdtemp()
            repo = await SqliteRepository.open(Path(data) / "paths.sqlite3", evaluator=evaluator)
        for k in range(2 + commits):  # two to create the drivers and warm up
            advanced = await repo.record_locations(fixes(k))
            assert len(advanced) == batch
        await repo.close()
        if store == "postgres":
            admin = await asyncpg.connect(postgres)
            await admin.execute(f'DROP DATABASE "{name}"')
            await admin.close()

    asyncio.run(main())


def run_step(step: str, units: int, batch: int, postgres: str) -> None:
    if step == "offer":
        _offer(units)
    elif step in ("location", "driver"):
        _build(step, units)
    else:
        _repository(step, units, batch, postgres)


def counted(step: str, units: int, batch: int, postgres: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PYTHON]
        argv += ["-m", "bench.ingest_paths", "--run", step, str(units), str(batch), postgres]
        subprocess.run(argv, cwd=ROOT, env=FIXED_HASHES, capture_output=True, check=True)
        for line in out.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals for {step}")


def per_update(step: str, batch: int, postgres: str) -> float:
    """Instructions per update of `step` (the difference of two counted runs)."""
    if step not in ("offer", "location", "driver"):  # a store: ~3,000 updates apart at least
        small = 1
        large = small + max(3, -(-3000 // batch))
        updates = (large - small) * batch
    else:
        small, large = 0, 10_000
        updates = large
    return (counted(step, large, batch, postgres) - counted(step, small, batch, postgres)) / updates


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        step, units, batch, postgres = sys.argv[2:6]
        run_step(step, int(units), int(batch), postgres)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("steps", nargs="*", choices=[*STEPS, []], default=[])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--postgres", default=LOCAL_POSTGRES)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind missing (Debian: valgrind)")
    for step in args.steps or STEPS:
        print(f"  {step}: {per_update(step, args.batch, args.postgres) / 1000:.1f} k", flush=True)


if __name__ == "__main__":
    main()
