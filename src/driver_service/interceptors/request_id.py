"""Every call's request id: the caller's `x-request-id` if it is sane, else a new one; kept in
observability.context's ContextVar for log lines and returned to a caller that sent one
(unary calls: in the trailers, so a failed call stays retryable; streams: in the headers, at
once). A caller that sent none gets none back: the trailer costs the runtime 0.5-2 % of a
GetDriver, and such a caller has nothing to match it with. A generated id is 32 lowercase
hex digits: the process's random prefix, then a count."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from functools import partial
from itertools import chain, count, repeat
from operator import add
from typing import TypeGuard

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
#: Ids are copied into logs and headers: no spaces, quotes or control characters.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}\Z")

_random_bits = random.getrandbits
#: Ids are made from one text of 29 hex digits (the stream's random prefix and a block
#: number) and each of these 4,096 endings.
_ENDINGS = tuple(f"{ending:03x}" for ending in range(4096))


def _id_stream() -> Iterator[str]:
    """Endless ids of 32 lowercase hex digits: a random prefix of 80 bits drawn now (20
    digits), a block number (9) and an ending (3). A block's text is formatted once and
    each id is that text plus an ending, by C functions chained, no Python code per id
    (~0.9 k instructions an id, where 128 random bits and their hex cost ~2.4 k:
    BENCHMARKS.md, issue 20). Unique within the stream (2**48 ids before the block number
    would need a tenth digit) and, by the prefix, across processes and restarts."""
    prefix = f"{_random_bits(80):020x}"
    blocks = map(f"{prefix}{{:09x}}".format, count())
    return chain.from_iterable(map(map, repeat(add), map(repeat, blocks), repeat(_ENDINGS)))


#: `new_request_id()`: the next id of the process's stream. Ids need to be unique, not
#: unguessable: the module's generator (reseeded in forked children) costs no system call,
#: unlike os.urandom. A partial of `next`, not a function: a Python frame would cost more
#: than the id. Pointed at a new stream in a forked child (drop_ready_ids).
new_request_id: partial[str] = partial(next, _id_stream())


def drop_ready_ids() -> None:
    """Start a new stream of ids, with a prefix of its own: a forked child must not go on
    with its parent's ids. (A partial is re-pointed in place through its pickle state, so
    every module that imported `new_request_id` gets the new stream.)"""
    new_request_id.__setstate__((next, (_id_stream(),), {}, None))  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=drop_ready_ids)


def is_safe_request_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _SAFE_ID.match(value) is not None
