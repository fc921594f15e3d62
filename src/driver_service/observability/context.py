"""The current call's scope (its request id, and for gRPC calls its caller and metadata) in
one ContextVar: set once per call, read by log lines and handlers. Here rather than in
interceptors/ so that logs do not import a transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any


class CallScope:
    """What log lines, auth helpers and handlers read of the current call. One object per
    call in one ContextVar: each ContextVar set costs a GetDriver ~0.9 k instructions, and a
    call had three (BENCHMARKS.md, issue 20). The gRPC pipeline fills in the scope it set at
    the handler lookup, in the call's own task (`task`), before the handler runs; anything
    else (HTTP requests, a principal set later) sets a new scope."""

    __slots__ = ("metadata", "principal", "request_id", "task")

    def __init__(
        self,
        request_id: str = "-",
        principal: object | None = None,
        task: asyncio.Task[Any] | None = None,
        metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> None:
        #: The call's request id ("-" outside a call).
        self.request_id = request_id
        #: The authenticated caller (a security.tokens.Principal), None if none.
        self.principal = principal
        #: The task the scope was set in (gRPC calls), whose scope only the pipeline fills.
        self.task = task
        #: The invocation metadata grpc.aio decoded to find the handler (gRPC calls).
        self.metadata = metadata

    def with_request_id(self, request_id: str) -> CallScope:
        """This scope with another request id, as a new scope (this one may be shared)."""
        return CallScope(request_id, self.principal, self.task, self.metadata)

    def with_principal(self, principal: object | None) -> CallScope:
        """This scope with another caller, as a new scope (this one may be shared)."""
        return CallScope(self.request_id, principal, self.task, self.metadata)


#: The current call's scope (outside a call: request id "-", no caller).
#: The default is never filled in: the pipeline fills only a scope set in its own task.
CALL: ContextVar[CallScope] = ContextVar("call", default=CallScope())  # noqa: B039


def current_request_id() -> str:
    return CALL.get().request_id


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so a format string can show it on each line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = CALL.get().request_id
        return True
