"""Every call's request id: the caller's `x-request-id` if it is sane, else a new one; kept in
observability.context's ContextVar for log lines and returned to a caller that sent one
(unary calls: in the trailers, so a failed call stays retryable; streams: in the headers, at
once). A caller that sent none gets none back: the trailer costs the runtime 0.5-2 % of a
GetDriver, and such a caller has nothing to match it with."""

from __future__ import annotations

import random
import re
from typing import TypeGuard

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
#: Ids are copied into logs and headers: no spaces, quotes or control characters.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}\Z")

_random_bits = random.getrandbits


def new_request_id() -> str:
    """128 random bits as 32 hex digits (the shape of a uuid4's hex). Ids need to be unique,
    not unguessable: the module's generator (reseeded in forked children) costs no system
    call, unlike os.urandom; its bytes in hex are the 32 digits (~2.2 k instructions, a
    format spec ~3.5 k: BENCHMARKS.md, issue 20)."""
    return _random_bits(128).to_bytes(16, "big").hex()


def is_safe_request_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _SAFE_ID.match(value) is not None
