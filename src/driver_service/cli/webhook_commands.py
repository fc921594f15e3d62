"""`driver-service webhooks add|list|remove|test|dead-letters|replay|rotate-secret`.

`add` and `rotate-secret` make the secret here when none is given (`whsec_` + base64 of 32
random bytes) and print it once: the server keeps it and never gives it back."""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from driver_service._gen.driver.v1 import webhooks_pb2 as wpb
from driver_service._gen.driver.v1 import webhooks_pb2_grpc as wpb_grpc
from driver_service.cli._client import add_client_options, client_settings
from driver_service.cli._output import emit, fail
from driver_service.cli.dispatch_commands import _channel, _duration, parse_duration_s
from driver_service.client import from_rpc_error


def make_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _record(w: wpb.Webhook) -> dict[str, object]:
    return {
        "id": w.id,
        "url": w.url,
        "types": list(w.types),
        "zone_ids": list(w.zone_ids),
        "driver_ids": list(w.driver_ids),
        "secret": w.secret_hint,
        "paused": w.paused,
        "cursor": w.cursor,
        "attempts": w.attempts,
        "last_error": w.last_error,
        "circuit_open": w.circuit_open,
    }


def _line(w: wpb.Webhook) -> str:
    state = "circuit-open" if w.circuit_open else ("paused" if w.paused else "active")
    types = ",".join(w.types) or "*"
    error = f"  last error: {w.last_error}" if w.last_error else ""
    return f"{w.id}  {w.url}  types={types}  {state}  cursor={w.cursor}{error}"


Call = Callable[[wpb_grpc.WebhookServiceStub, tuple[tuple[str, str], ...], float], Awaitable[int]]


async def _call(args: argparse.Namespace, body: Call) -> int:
    channel, metadata = _channel(args)
    async with channel:
        try:
            return await body(wpb_grpc.WebhookServiceStub(channel), metadata, args.timeout)
        except grpc.RpcError as error:
            return fail(from_rpc_error(error, client_settings(args).transport), args.json)


async def _add(args: argparse.Namespace) -> int:
    secret = args.secret or make_secret()

    async def body(stub: Any, md: Any, timeout: float) -> int:
        request = wpb.AddWebhookRequest(
            webhook=wpb.Webhook(
                id=args.id, url=args.url, types=args.type or [], zone_ids=args.zone or [],
                driver_ids=args.driver or [],
            ),
            secret=secret,
        )  # fmt: skip
        if args.after is not None:
            request.after_id = args.after
        w = await stub.AddWebhook(request, metadata=md, timeout=timeout)
        shown = "" if args.secret else f"\nsecret (shown once, keep it): {secret}"
        record = _record(w)
        if not args.secret:
            record["secret"] = secret
        emit(record, args.json, _line(w) + shown)
        return 0

    return await _call(args, body)


async def _list(args: argparse.Namespace) -> int:
    async def body(stub: Any, md: Any, timeout: float) -> int:
        reply = await stub.ListWebhooks(wpb.ListWebhooksRequest(), metadata=md, timeout=timeout)
        for w in reply.webhooks:
            emit(_record(w), args.json, _line(w))
        return 0

    return await _call(args, body)


async def _remove(args: argparse.Namespace) -> int:
    async def body(stub: Any, md: Any, timeout: float) -> int:
        await stub.RemoveWebhook(wpb.RemoveWebhookRequest(id=args.id), metadata=md, timeout=timeout)
        emit({"id": args.id, "removed": True}, args.json, f"{args.id}  removed")
        return 0

    return await _call(args, body)


async def _test(args: argparse.Namespace) -> int:
    async def body(stub: Any, md: Any, timeout: float) -> int:
        r = await stub.TestWebhook(wpb.TestWebhookRequest(id=args.id), metadata=md, timeout=timeout)
        ms = r.duration.ToNanoseconds() / 1e6
        text = f"{args.id}  {'ok' if r.ok else 'failed'}  HTTP {r.http_status}  {ms:.0f} ms"
        emit(
            {"id": args.id, "ok": r.ok, "http_status": r.http_status, "error": r.error,
             "duration_ms": round(ms, 1)},
            args.json,
            text + (f"  {r.error}" if r.error else ""),
        )  # fmt: skip
        return 0 if r.ok else 1

    return await _call(args, body)


async def _dead_letters(args: argparse.Namespace) -> int:
    async def body(stub: Any, md: Any, timeout: float) -> int:
        after = 0
        while True:
            reply = await stub.ListDeadLetters(
                wpb.ListDeadLettersRequest(id=args.id, after_event_id=after),
                metadata=md,
                timeout=timeout,
            )
            for d in reply.dead_letters:
                emit(
                    {"event_id": d.event_id, "type": d.event_type, "attempts": d.attempts,
                     "last_error": d.last_error, "replaying": d.replaying},
                    args.json,
                    f"{d.event_id}  {d.event_type}  attempts={d.attempts}  {d.last_error}"
                    + ("  (replaying)" if d.replaying else ""),
                )  # fmt: skip
                after = d.event_id
            if len(reply.dead_letters) < 1000:
                return 0

    return await _call(args, body)


async def _replay(args: argparse.Namespace) -> int:
    async def body(stub: Any, md: Any, timeout: float) -> int:
        reply = await stub.Replay(
            wpb.ReplayRequest(id=args.id, event_ids=args.event_ids), metadata=md, timeout=timeout
        )
        emit({"id": args.id, "queued": reply.queued}, args.json, f"{reply.queued} queued")
        return 0

    return await _call(args, body)


async def _rotate(args: argparse.Namespace) -> int:
    secret = args.secret or make_secret()

    async def body(stub: Any, md: Any, timeout: float) -> int:
        w = await stub.RotateSecret(
            wpb.RotateSecretRequest(id=args.id, secret=secret, overlap=_duration(args.overlap)),
            metadata=md,
            timeout=timeout,
        )
        record = _record(w)
        if not args.secret:
            record["secret"] = secret
        shown = "" if args.secret else f"\nnew secret (shown once, keep it): {secret}"
        emit(record, args.json, _line(w) + shown)
        return 0

    return await _call(args, body)


def register(commands: Any) -> None:
    hooks = commands.add_parser("webhooks", help="webhook endpoints the event log is sent to")
    sub = hooks.add_subparsers(dest="webhooks_command", required=True)

    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], Any]) -> Any:
        parser = sub.add_parser(name, help=help_text)
        add_client_options(parser)
        parser.set_defaults(run=lambda a: asyncio.run(run(a)))
        return parser

    add = command("add", "register an endpoint (prints a new secret once)", _add)
    add.add_argument("url", help="https://… (http:// only if the server allows it)")
    add.add_argument("--id", default="", help="[default: chosen by the server]")
    add.add_argument("--type", action="append", help="event type or glob, e.g. zone.* (repeat)")
    add.add_argument("--zone", action="append", help="only events of this zone (repeatable)")
    add.add_argument("--driver", action="append", help="only events of this driver (repeatable)")
    add.add_argument("--secret", default="", help="whsec_… [default: a new random one]")
    add.add_argument("--after", type=int, default=None, help="also events after this id")
    command("list", "endpoints and their delivery state", _list)
    command("remove", "remove an endpoint", _remove).add_argument("id")
    command("test", "send a signed webhook.test now", _test).add_argument("id")
    command(
        "dead-letters", "events set aside after their last attempt", _dead_letters
    ).add_argument("id")
    replay = command("replay", "deliver dead letters again", _replay)
    replay.add_argument("id")
    replay.add_argument("event_ids", nargs="*", type=int, help="[default: all]")
    rotate = command(
        "rotate-secret", "sign with a new secret (old one kept for --overlap)", _rotate
    )
    rotate.add_argument("id")
    rotate.add_argument("--secret", default="", help="whsec_… [default: a new random one]")
    rotate.add_argument(
        "--overlap", type=parse_duration_s, default=86_400.0, help="e.g. 1h [default 24h]"
    )
