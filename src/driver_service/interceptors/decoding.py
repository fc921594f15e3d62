"""Undecodable requests answered with INVALID_ARGUMENT, not UNKNOWN.

Stock grpcio answers a body that is not valid protobuf with UNKNOWN and the Python
exception's name in the message. Here the deserializer returns a marker instead of raising,
and the call pipeline ends the call (or the stream, at that message) with a message a caller
can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Undecodable:
    """Stands in for a message whose bytes did not parse."""

    __slots__ = ()


UNDECODABLE = Undecodable()


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserializer`, answering UNDECODABLE instead of raising."""

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure means the same to the caller
            return UNDECODABLE

    return decode


def undecodable_message(method: str) -> str:
    return f"the request to {method} is not a valid protobuf message of the method's request type"
