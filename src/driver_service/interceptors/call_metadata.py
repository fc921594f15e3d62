"""The current call's invocation metadata, decoded once per call.

grpc.aio decodes a call's metadata to find its handler; `context.invocation_metadata()`
decodes it all again (~4 k of ~360 k instructions per GetDriver, bench/instructions.py).
A handler lookup keeps the decoded tuple in the call's scope (observability.context, which
the pipeline then fills in with the request id and the caller) and the pipeline reads it
back: grpc.aio finds the handler and runs it in the same task, one call per task.
"""

from __future__ import annotations

from asyncio import get_running_loop
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from driver_service.observability.context import CALL, SCOPE_TASK, CallScope, task_on

#: Invocation metadata: (key, value) pairs, values bytes for "-bin" keys.
Metadata: TypeAlias = Iterable[tuple[str, str | bytes]]
if TYPE_CHECKING:
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def keep_metadata(handler_call_details: grpc.HandlerCallDetails) -> None:
    """Keep the metadata grpc.aio decoded for the handler lookup, for `metadata_of`, in a
    new scope of the call's task (what readers saw before it, request id and caller, kept)."""
    outer = CALL.get()
    CALL.set(
        [outer[0], outer[1], task_on(get_running_loop()), handler_call_details.invocation_metadata]
    )


def kept_scope() -> CallScope | None:
    """The scope `keep_metadata` set for the current call, None if none was set in this
    task: a grpc.aio that looked handlers up elsewhere would make the pipeline decode again
    and set a scope of its own, never hand one call another's headers or scope."""
    scope = CALL.get()
    task = scope[SCOPE_TASK]
    if task is not None and task is task_on(get_running_loop()):
        return scope
    return None


def metadata_of(context: _Context) -> Metadata:
    """The current call's invocation metadata, decoded once per call where possible."""
    scope = kept_scope()
    if scope is not None:
        metadata: Metadata = scope[3]  # SCOPE_METADATA
        return metadata
    return context.invocation_metadata() or ()
