"""PostgreSQL going away under the real write path (LocationWriter + DriverTracking), and
replicas racing to migrate one database: nothing acknowledged is lost, and everything
recovers without recreating the repository."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from driver_service.adapters.postgres import schema as postgres_schema
from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.adapters.postgres.schema import SchemaNotMigrated, SchemaTooNew
from driver_service.app.fanout import MemoryBus
from driver_service.app.tracking import DriverTracking
from driver_service.app.writer import Commit
from driver_service.domain import Location, Status, StoreUnavailable
from tests.helpers.postgres import PostgresServer, create_database

T0 = 1_717_200_000 * 10**9


async def stored_fixes(url: str) -> set[tuple[str, int]]:
    """What the database holds, read by a connection of its own."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT driver_id, recorded_at_ns FROM location_history")
    finally:
        await connection.close()
    return {(r[0], r[1]) for r in rows}


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_postgres_lost_mid_upload_acknowledges_only_what_it_stored(
    own_postgres_server: PostgresServer, how: str
) -> None:
    """Uploads flow while PostgreSQL is stopped (fast shutdown) or SIGKILLed: updates fail
    with StoreUnavailable, every acknowledged one is in the database after the restart (same
    data dir, same port), and the same repository and writer take new writes afterwards."""
    postgres_server = own_postgres_server
    postgres_url = await create_database(postgres_server)
    repository = await PostgresRepository.open(postgres_url, min_size=2, max_size=4)
    tracking = DriverTracking(repository, MemoryBus())
    await tracking.start()
    sent: list[tuple[tuple[str, int], Commit]] = []
    stop_sending = asyncio.Event()

    async def upload() -> None:
        i = 0
        while not stop_sending.is_set():
            driver_id, at_ns = f"d{i % 7}", T0 + i
            future = tracking.writer.submit(Location(driver_id, 10.0, 20.0, 5.0, 90.0, at_ns))
            sent.append(((driver_id, at_ns), future))
            i += 1
            await asyncio.sleep(0.0005 if i % 4 else 0.002)

    sender = asyncio.create_task(upload())
    try:
        for _ in range(500):  # until some commits went through
            if sum(f.succeeded() for _, f in sent) >= 50:
                break
            await asyncio.sleep(0.01)
        if how == "stop":
            await asyncio.to_thread(postgres_server.stop)
        else:
            await asyncio.to_thread(postgres_server.kill)
        await asyncio.sleep(0.3)  # keep uploading while the server is gone
        with pytest.raises(StoreUnavailable):
            await tracking.get_driver("d1")
        with pytest.raises(StoreUnavailable):
            await repository.ping()
    finally:
        stop_sending.set()
        await sender
    outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
    await asyncio.to_thread(postgres_server.start)

    acknowledged = {key for (key, _), o in zip(sent, outcomes, strict=True) if o is None}
    failed = [o for o in outcomes if o is not None]
    assert len(acknowledged) >= 50
    assert failed, "no update failed although the server was down"
    assert all(isinstance(o, StoreUnavailable) for o in failed), failed[:3]
    stored = await stored_fixes(postgres_url)
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged fixes lost"

    # Same repository, same writer: the pool reconnects by itself.
    await repository.ping()
    after = T0 + 10**9
    await tracking.writer.submit(Location("d1", 11.0, 21.0, 6.0, 91.0, after))
    driver = await tracking.get_driver("d1")
    assert driver.location is not None
    assert driver.location.recorded_at_ns == after
    assert ("d1", after) in await stored_fixes(postgres_url)
    await tracking.close()


async def test_the_pool_recovers_between_calls_without_a_failed_one(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """A restart while the repository is idle costs no failed call afterwards: connections the
    server closed are replaced on the next acquire."""
    repository = await PostgresRepository.open(postgres_url, min_size=3, max_size=3)
    try:
        await repository.set_status("a", Status.BUSY, T0)
        await asyncio.to_thread(postgres_server.restart)
        await asyncio.sleep(0.05)  # let the pool see its connections closed
        for _ in range(3):
            assert await repository.get_driver("a") is not None
        await repository.ping()
    finally:
        await repository.close()


async def test_replicas_starting_at_once_apply_each_migration_once(postgres_url: str) -> None:
    repositories = await asyncio.gather(
        *(PostgresRepository.open(postgres_url, min_size=1, max_size=1) for _ in range(6))
    )
    for repository in repositories:
        await repository.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        versions = [r[0] for r in await connection.fetch("SELECT version FROM schema_migrations")]
        tables = {
            r[0]
            for r in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    finally:
        await connection.close()
    assert sorted(versions) == list(range(1, postgres_schema.SCHEMA_VERSION + 1))
    # History is partitioned by day: the default partition exists from the migration on.
    assert tables == {
        "drivers",
        "location_history",
        "location_history_default",
        "schema_migrations",
        "zones",
        "zones_version",
        "events",
        "webhook_endpoints",
        "webhook_dead_letters",
    }


async def test_migrate_command_then_start_without_migrating(postgres_url: str) -> None:
    with pytest.raises(SchemaNotMigrated, match="driver-service migrate"):
        await PostgresRepository.open(postgres_url, migrate=False)

    def migrate_cli() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "driver_service", "migrate", "--store", postgres_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = await asyncio.to_thread(migrate_cli)
    assert first.returncode == 0, first.stderr
    every = ", ".join(str(v) for v in range(1, postgres_schema.SCHEMA_VERSION + 1))
    assert f"applied {every}; schema at version {postgres_schema.SCHEMA_VERSION}" in first.stdout
    again = await asyncio.to_thread(migrate_cli)
    assert again.returncode == 0, again.stderr
    assert "nothing to apply" in again.stdout

    repository = await PostgresRepository.open(postgres_url, migrate=False)
    await repository.ping()
    await repository.close()


async def test_a_database_from_a_newer_release_is_refused(postgres_url: str) -> None:
    repository = await PostgresRepository.open(postgres_url)
    await repository.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            postgres_schema.SCHEMA_VERSION + 1,
        )
    finally:
        await connection.close()

    for migrate in (True, False):
        with pytest.raises(SchemaTooNew, match="newer than this release"):
            await PostgresRepository.open(postgres_url, migrate=migrate)


async def test_migrate_command_reports_an_unreachable_server_in_one_line(
    postgres_server: PostgresServer,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_database"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "driver_service", "migrate", "--store", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "no_such_database" in result.stderr
