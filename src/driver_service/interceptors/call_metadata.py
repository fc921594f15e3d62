"""The current call's invocation metadata, decoded once per call.

grpc.aio decodes a call's metadata to find its handler; `context.invocation_metadata()`
decodes it all again (~4 k of ~360 k instructions per GetDriver, bench/instructions.py).
A handler lookup keeps the decoded tuple here and the pipeline reads it back: grpc.aio
finds the handler and runs it in the same task, one call per task.
"""

from __future__ import annotations

import asyncio
from asyncio import current_task
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

#: Invocation metadata: (key, value) pairs, values bytes for "-bin" keys.
Metadata: TypeAlias = Iterable[tuple[str, str | bytes]]
if TYPE_CHECKING:
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

#: The metadata grpc.aio decoded to find the current call's handler, and the call's task.
_CALL_METADATA: ContextVar[tuple[asyncio.Task[Any] | None, Metadata]] = ContextVar("call_metadata")


def keep_metadata(handler_call_details: grpc.HandlerCallDetails) -> None:
    """Keep the metadata grpc.aio decoded for the handler lookup, for `metadata_of`."""
    _CALL_METADATA.set((current_task(), handler_call_details.invocation_metadata))


def metadata_of(context: _Context) -> Metadata:
    """The current call's invocation metadata, decoded once per call where possible. Kept
    metadata counts only in the task it was kept in: a grpc.aio that looked handlers up
    elsewhere would make this decode again, never hand one call another's headers."""
    kept = _CALL_METADATA.get(None)
    if kept is not None and kept[0] is current_task() and kept[0] is not None:
        return kept[1]
    return context.invocation_metadata() or ()
