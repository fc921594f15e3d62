"""The status code a server call ended with, as interceptors see it, in one place.

Logging and metrics must agree on the code of every call, so both derive it here: from the
context after an abort, CANCELLED when the caller went away, INTERNAL for an escaping
exception (the recovery interceptor outside turns that into INTERNAL for the caller).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code(code: Any) -> grpc.StatusCode:
    """`context.code()` as a StatusCode: grpc.aio reports an int, a StatusCode, or None (OK)."""
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


def code_of_exception(
    exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]
) -> grpc.StatusCode:
    """The code a call ends with when `exc` escapes its handler."""
    if isinstance(exc, grpc.aio.AbortError):
        return status_code(context.code())
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL
