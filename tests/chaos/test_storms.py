"""A caller's cancel, deadline or disconnect affects that call only: storms of them at every
step of every RPC kind, against a real server subprocess on SQLite and on PostgreSQL + Redis.
After each storm the server must be unharmed (`ChaosServer.assert_unharmed`); the last test
sends SIGTERM with calls in flight and expects exit 0 within the grace period.

The tests of this module share one server per backend and run in file order; each storm is
short (around a second) and loops over waves of concurrent calls.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.helpers import storm
from tests.helpers.chaos_server import GRACE_S, ChaosServer
from tests.helpers.storm import run_storm

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(60)]


async def test_uploads_cancelled_at_every_step(chaos: ChaosServer) -> None:
    async with chaos.clients() as c:
        await run_storm("upload", 6, 60, lambda n: storm.upload(c, chaos.ledger, n))
    await chaos.assert_unharmed()


async def test_reads_and_watchers_cancelled_while_drivers_move(chaos: ChaosServer) -> None:
    async with chaos.clients() as c:

        async def one(n: int) -> None:
            await storm.get_driver(c, chaos.ledger, n)
            await storm.watch_while_uploading(c, chaos.ledger, n)

        await run_storm("read and watch", 5, 60, one)
    await chaos.assert_unharmed()


async def test_sessions_cancelled_at_every_step(chaos: ChaosServer) -> None:
    async with chaos.clients() as c:
        await run_storm("session", 5, 60, lambda n: storm.session(c, chaos.ledger, n))
    await chaos.assert_unharmed()


async def test_offers_pushed_while_sessions_and_waiters_hang_up(chaos: ChaosServer) -> None:
    async with chaos.clients() as c:
        await run_storm("offer", 4, 40, lambda n: storm.offer(c, chaos.ledger, n))
    await asyncio.sleep(storm.OFFER_TTL_S)  # offers nobody answered time out first
    await chaos.assert_unharmed()


async def test_every_kind_at_once_in_loops(chaos: ChaosServer) -> None:
    kinds = (storm.upload, storm.get_driver, storm.watch, storm.session, storm.offer)
    async with chaos.clients() as c:
        await run_storm(
            "mixed", 4, 100, lambda n: kinds[n % len(kinds)](c, chaos.ledger, n // len(kinds))
        )
    await asyncio.sleep(storm.OFFER_TTL_S)
    await chaos.assert_unharmed()


async def test_channels_closed_with_calls_in_flight(chaos: ChaosServer) -> None:
    await run_storm(
        "channel close",
        5,
        20,
        lambda n: storm.close_channel_midway(chaos.process.target, chaos.ledger, n),
    )
    await chaos.assert_unharmed()


async def test_raw_sockets_that_give_up_mid_handshake(chaos: ChaosServer) -> None:
    admin_port = int(chaos.admin.rsplit(":", 1)[1])

    async def one(n: int) -> None:
        await storm.raw_socket(chaos.port if n % 3 else admin_port, n)

    await run_storm("raw socket", 5, 28, one)
    await chaos.assert_unharmed()


async def test_sigterm_with_calls_in_flight_exits_zero_within_grace(chaos: ChaosServer) -> None:
    """Last in the module: it ends the shared server. What it acknowledged is still there."""
    async with chaos.clients() as c:
        storm_task = asyncio.ensure_future(
            run_storm("before SIGTERM", 3, 40, lambda n: storm.session(c, chaos.ledger, n))
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        chaos.process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(chaos.process.wait, GRACE_S + 5)
        await storm_task
    assert code == 0, chaos.process.stderr[-3000:]
    assert time.monotonic() - started < GRACE_S + 2
    missing = chaos.ledger.acked - await chaos.read_history()
    assert not missing, f"{len(missing)} acknowledged updates lost: {sorted(missing)[:5]}"
