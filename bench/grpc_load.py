"""GetDriver calls from grpcio's own client (grpc core's HTTP/2 and HPACK), for the instruction
counts: `python -m bench.grpc_load PORT CALLS [--token] [--ready]`, 10 channels with one
call in flight each, as `h2load -c 10` sends them (`--ready`: connected before the count).

h2load (nghttp2) Huffman-codes the `authorization` value and never indexes it; grpc core's
client never indexes it either (it indexes no metadata of the application's) but sends it
as a plain literal, which costs the server less to parse. A server's cost of the token header
depends on the client that sends it; this load shows what a grpcio client's costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from bench.unary import GET_DRIVER, PROBE_ID
from driver_service._gen.driver.v1 import driver_pb2 as pb

CHANNELS = 10


async def _calls(
    port: int, calls: int, metadata: tuple[tuple[str, str], ...], ready: bool = False
) -> int:
    """Every call's reply checked; the number of calls that returned the probe driver. With
    `ready`, the channels connect first, then "ready" is printed and a line awaited on stdin
    (the counts are zeroed meanwhile)."""
    request = pb.GetDriverRequest(driver_id=PROBE_ID).SerializeToString()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(CHANNELS)]
    try:
        if ready:
            await asyncio.gather(*(channel.channel_ready() for channel in channels))
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)

        async def worker(channel: grpc.aio.Channel, count: int) -> int:
            get_driver = channel.unary_unary(GET_DRIVER, None, None)  # bytes in, bytes out
            ok = 0
            for _ in range(count):
                reply = await get_driver(request, metadata=metadata, timeout=60)
                ok += pb.GetDriverResponse.FromString(reply).driver_id == PROBE_ID
            return ok

        shares = [calls // CHANNELS + (n < calls % CHANNELS) for n in range(CHANNELS)]
        done = await asyncio.gather(*(worker(c, k) for c, k in zip(channels, shares, strict=True)))
        return sum(done)
    finally:
        for channel in channels:
            await channel.close(None)


def main() -> None:
    from bench.profile import auth_header

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("calls", type=int)
    parser.add_argument("--token", action="store_true", help="the production token header")
    parser.add_argument("--ready", action="store_true", help="connect, say so, await a line")
    args = parser.parse_args()
    metadata: tuple[tuple[str, str], ...] = ()
    if args.token:
        name, _, value = auth_header().partition(": ")
        metadata = ((name, value),)
    ok = asyncio.run(_calls(args.port, args.calls, metadata, args.ready))
    print(f"{ok} succeeded")


if __name__ == "__main__":
    main()
