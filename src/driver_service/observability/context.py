"""The current call's scope (its request id, and for gRPC calls its caller and metadata) in
one ContextVar: set once per call, read by log lines and handlers. Here rather than in
interceptors/ so that logs do not import a transport."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final, TypeAlias

#: What log lines, auth helpers and handlers read of the current call, one list per call:
#: [request id ("-" outside a call), caller (a security.tokens.Principal, or None), the
#: task it was set in (gRPC calls: only the pipeline fills in a scope of its own task),
#: the invocation metadata grpc.aio decoded to find the handler (gRPC calls)]. One list in
#: one ContextVar: the three ContextVars a call set before, and a slotted object in their
#: place, each cost more (~7 k and ~8 k instructions a call against ~5 k: BENCHMARKS.md,
#: issue 20). A scope may be shared with tasks the call started: change one only in the
#: call's own task before its handler runs, else set a new one.
CallScope: TypeAlias = list[Any]
SCOPE_REQUEST_ID: Final = 0
SCOPE_PRINCIPAL: Final = 1
SCOPE_TASK: Final = 2
SCOPE_METADATA: Final = 3

#: The task running on a loop: `task_on(asyncio.get_running_loop())` is
#: `asyncio.current_task()` without its Python frame on Python 3.11 (~1 k instructions, twice
#: a call: BENCHMARKS.md, issue 20); from 3.12 on, current_task itself is C.
task_on: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info >= (3, 12):
    task_on = asyncio.current_task
else:
    # What current_task() reads on 3.11 (missing from the stubs).
    task_on = getattr(asyncio.tasks, "_current_tasks").get  # noqa: B009

#: The current call's scope. The default (outside a call) is never changed: it has no task.
CALL: ContextVar[CallScope] = ContextVar("call", default=["-", None, None, ()])  # noqa: B039


def new_scope(
    request_id: str = "-", principal: object | None = None, task: object | None = None
) -> CallScope:
    """A scope without metadata (HTTP requests, a scope replaced outside the pipeline)."""
    return [request_id, principal, task, ()]


def current_request_id() -> str:
    request_id: str = CALL.get()[SCOPE_REQUEST_ID]
    return request_id


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so a format string can show it on each line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = CALL.get()[SCOPE_REQUEST_ID]
        return True
