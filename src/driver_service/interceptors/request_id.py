"""Every call's request id: the caller's `x-request-id` if it is sane, else a new one; kept in
a ContextVar for log lines and returned to the caller (unary calls: in the trailers, so a
failed call stays retryable; streams: in the headers, at once)."""

from __future__ import annotations

import logging
import random
import re
from contextvars import ContextVar
from typing import TypeGuard

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
#: Ids are copied into logs and headers: no spaces, quotes or control characters.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}\Z")

_random_bits = random.getrandbits

#: The current call's request id ("-" outside a call).
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")


def current_request_id() -> str:
    return REQUEST_ID.get()


def new_request_id() -> str:
    """128 random bits as 32 hex digits (the shape of a uuid4's hex). Ids need to be unique,
    not unguessable: the module's generator (reseeded in forked children) costs no system
    call, unlike os.urandom."""
    return f"{_random_bits(128):032x}"


def is_safe_request_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _SAFE_ID.match(value) is not None


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so a format string can show it on each line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True
