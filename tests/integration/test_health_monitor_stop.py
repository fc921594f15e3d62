"""The health monitor stops when told, even when the stop lands as one of its store pings
completes. On Python 3.11, `asyncio.wait_for` returns the result of an awaitable that
completed as its task was cancelled, swallowing the cancel: a monitor that pinged through it
ran on past its stop and held shutdown up forever (the loop only sleeps and pings)."""

from __future__ import annotations

import asyncio

from driver_service.server.running import RunningServer

#: A prompt stop takes milliseconds; a lost one never ends.
PROMPT_S = 5.0


async def test_a_stop_landing_as_a_ping_completes_still_stops_the_monitor(
    server: RunningServer,
) -> None:
    monitor = server._monitor
    assert monitor is not None
    repository = server.tracking.repository
    real_ping = repository.ping
    stops: list[asyncio.Task[None]] = []

    async def ping() -> None:
        await real_ping()
        if not stops:  # the stop starts as this ping completes (its result not yet taken)
            loop = asyncio.get_running_loop()
            loop.call_soon(lambda: stops.append(asyncio.ensure_future(monitor.stop())))

    repository.ping = ping  # type: ignore[method-assign]
    try:
        while not stops:  # the monitor pings once a second
            await asyncio.sleep(0.05)
        done, _ = await asyncio.wait(stops, timeout=PROMPT_S)
        assert done, "the health monitor ran on past its stop"
    finally:
        repository.ping = real_ping  # type: ignore[method-assign]
