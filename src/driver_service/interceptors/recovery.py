"""An exception escaping a handler becomes INTERNAL for the caller, with no details; the
stack goes to the log. A refused incoming message escaping it becomes its refusal."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from driver_service.interceptors._handlers import RefusedMessage

log = logging.getLogger("driver_service.interceptors.recovery")

INTERNAL_MESSAGE = "internal server error"


async def recover(context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    """Answer INTERNAL for an unexpected error (call from an `except` block), unless the call
    is already over (the peer went away, or the handler's own abort failed on a dead
    connection): then there is no one to answer, and aborting again would only raise "abort
    already called"."""
    if context.done() or context.cancelled():
        log.debug("error in %s after the call ended", method, exc_info=True)
        return
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


async def refuse(context: grpc.aio.ServicerContext[Any, Any], refused: RefusedMessage) -> None:
    """End the call with the refusal of one of its incoming messages (from an `except`
    block in the handler's own task), unless the call is already over."""
    if context.done() or context.cancelled():
        return
    await context.abort(*refused.refusal)
