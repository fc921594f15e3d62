"""The current call's request id, in a ContextVar: set by the call pipeline for each call,
read by log lines. Here rather than in interceptors/ so that logs do not import a transport."""

from __future__ import annotations

import logging
from contextvars import ContextVar

#: The current call's request id ("-" outside a call).
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")


def current_request_id() -> str:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so a format string can show it on each line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True
