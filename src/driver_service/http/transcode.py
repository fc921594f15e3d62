"""Calls the gRPC servicers in-process for HTTP requests (transcoding without a proxy hop):
JSON and query parameters become the request message (proto3 JSON mapping), the method's
rule of api/rules.py authorizes the caller exactly as the gRPC pipeline does, and the
servicer's answer, or its abort, becomes the response. One code path, so validation, counts
and error messages are the gRPC ones by construction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from driver_service.api.rules import HTTP_RULES
from driver_service.http.errors import HttpError
from driver_service.interceptors.auth import (
    AuthPolicy,
    admission,
    authenticate,
    message_check,
    set_principal,
)
from driver_service.security.tokens import Principal

M = TypeVar("M", bound=Message)


class HttpCallContext:
    """What the servicers use of `grpc.aio.ServicerContext`, for a call that came over HTTP:
    `abort` raises HttpError with the same code and message; there is no deadline."""

    __slots__ = ()

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        raise HttpError(code, details)

    def time_remaining(self) -> float | None:
        return None


CONTEXT: Any = HttpCallContext()


def authorize(
    policy: AuthPolicy | None,
    authorization: Sequence[str],
    method: str,
    messages: Iterable[Message] = (),
) -> Principal | None:
    """The caller of the gRPC method `method` (its path, e.g. /driver.v1.DriverService/
    GetDriver; or an HTTP-only route of api/rules.py HTTP_RULES, e.g. "GET /v1/drivers")
    from its Authorization headers, refused as the gRPC pipeline refuses it; each of
    `messages` checked against a driver token. Sets the principal the servicers read."""
    if policy is None:
        return None
    principal, refusal = authenticate(
        policy, authorization[0] if authorization else None, len(authorization)
    )
    if refusal is not None:
        raise HttpError(*refusal)
    assert principal is not None
    rule = policy.rules.get(method) or HTTP_RULES.get(method)
    refusal = admission(principal, rule, method)
    if refusal is not None:
        raise HttpError(*refusal)
    check = message_check(principal, rule)
    if check is not None:
        for message in messages:
            refusal = check(message)
            if refusal is not None:
                raise HttpError(*refusal)
    set_principal(principal)
    return principal


def bad_request(message: str) -> HttpError:
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_json(value: Any, message: M) -> M:
    """`value` (decoded JSON) into `message` by the proto3 JSON mapping; unknown fields and
    wrong types are INVALID_ARGUMENT naming the field."""
    if not isinstance(value, dict):
        raise bad_request(f"the body must be a JSON object ({message.DESCRIPTOR.name})")
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        raise bad_request(str(exc)) from None
    return message


def _scalar(field: FieldDescriptor, text: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise bad_request(f"query parameter {field.name}: {text!r} is not true or false")
    return text  # json_format parses numbers, enums, Timestamp and Duration from strings


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    found = descriptor.fields_by_name.get(name)
    if found is None:
        found = next((f for f in descriptor.fields if f.json_name == name), None)
    return found


def query_to_dict(
    descriptor: Descriptor, query: Iterable[tuple[str, str]], path: Mapping[str, str]
) -> dict[str, Any]:
    """Query parameters (`a.b=1`, repeated keys for repeated fields, snake_case or
    lowerCamelCase names) and path parameters as the JSON form of a request message."""
    out: dict[str, Any] = {}
    for key, text in [*query, *path.items()]:
        target, desc = out, descriptor
        parts = key.split(".")
        for i, part in enumerate(parts):
            field = _field(desc, part)
            if field is None:
                raise bad_request(f"unknown query parameter {key!r}")
            name = field.name
            if i < len(parts) - 1:
                if field.message_type is None or field.is_repeated:
                    raise bad_request(f"unknown query parameter {key!r}")
                target = target.setdefault(name, {})
                desc = field.message_type
                continue
            if field.message_type is not None and field.message_type.full_name not in (
                "google.protobuf.Timestamp",
                "google.protobuf.Duration",
            ):
                raise bad_request(f"query parameter {key!r} names a message, not a value")
            value = _scalar(field, text)
            if field.is_repeated:
                target.setdefault(name, []).append(value)
            elif name in target:
                raise bad_request(f"query parameter {key!r} given twice")
            else:
                target[name] = value
    return out


def to_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON form, lowerCamelCase names, fields at their defaults included."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
