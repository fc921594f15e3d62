"""Interceptor that authenticates every call (unary and streaming) with a bearer JWT and
authorizes it per method, checking each incoming message of a stream before the handler
sees it.

Policy for driver.v1.DriverService:

| method          | service token needs | driver token may call when                          |
|-----------------|---------------------|-----------------------------------------------------|
| GetDriver       | drivers:read        | the request's driver_id is its own `sub`            |
| StreamLocation  | drivers:read        | the request's driver_id is its own `sub`            |
| UploadLocations | drivers:write       | every message's driver_id is its own `sub`          |
| DriverSession   | drivers:write       | every location / status change names its own `sub`  |

A driver may read its own record (the driver app shows it) but never another driver's.
Any other method of a non-exempt service is denied (deny by default); exempt services
(health, reflection) are chosen by configuration and can never include driver.v1.

On a stream, the first message naming a foreign driver ends the call with PERMISSION_DENIED:
that message and every later one never reach the handler, so none of them is stored.
Updates of the same stream accepted *before* the violation were already queued for commit
and may be persisted; they were legitimate, the caller's own driver id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from driver_service.interceptors._handlers import (
    HandlerCache,
    MessageCheck,
    StreamBehavior,
    UnaryBehavior,
    checked_read_context,
    checked_requests,
    wrap_handler,
)
from driver_service.interceptors.selector import ExemptServices
from driver_service.security.tokens import (
    SCOPE_READ,
    SCOPE_WRITE,
    InvalidToken,
    Principal,
    TokenValidator,
)

AUTHORIZATION_HEADER = "authorization"
_DRIVER_SERVICE = "/driver.v1.DriverService/"

#: The authenticated caller of the current call (None outside a call or on exempt services).
PRINCIPAL: ContextVar[Principal | None] = ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    return PRINCIPAL.get()


#: Returns the driver id a request message acts on, or None if it names none (heartbeat).
DriverIdOf = Callable[[Any], str | None]


def _field_driver_id(message: Any) -> str | None:
    return str(message.driver_id)


def _event_driver_id(event: Any) -> str | None:
    kind = event.WhichOneof("event")
    if kind == "location":
        return str(event.location.driver_id)
    if kind == "status_change":
        return str(event.status_change.driver_id)
    return None


@dataclass(frozen=True, slots=True)
class MethodRule:
    """Who may call one method: services with `scope`; drivers, if `driver_id_of` is set,
    only for messages that name their own id."""

    scope: str
    driver_id_of: DriverIdOf | None = None


DEFAULT_RULES: Mapping[str, MethodRule] = {
    _DRIVER_SERVICE + "GetDriver": MethodRule(SCOPE_READ, _field_driver_id),
    _DRIVER_SERVICE + "StreamLocation": MethodRule(SCOPE_READ, _field_driver_id),
    _DRIVER_SERVICE + "UploadLocations": MethodRule(SCOPE_WRITE, _field_driver_id),
    _DRIVER_SERVICE + "DriverSession": MethodRule(SCOPE_WRITE, _event_driver_id),
}


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """How calls are authenticated and authorized; built once at start."""

    validator: TokenValidator
    rules: Mapping[str, MethodRule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    exempt: ExemptServices = field(default_factory=ExemptServices.of)


def _authorization(metadata: Any) -> tuple[str | None, int]:
    values = [v for k, v in metadata or () if k == AUTHORIZATION_HEADER]
    if not values:
        return None, 0
    value = values[0]
    return (value if isinstance(value, str) else None), len(values)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """UNAUTHENTICATED when the token is missing or invalid (the message says which check
    failed); PERMISSION_DENIED when the caller may not do this."""

    def __init__(self, policy: AuthPolicy) -> None:
        self._policy = policy
        self._cache = HandlerCache()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or self._policy.exempt.exempt(method):
            return handler
        return self._cache.wrap(handler, lambda h: self._wrap(h, method))

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        rule = self._policy.rules.get(method)

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> MessageCheck | None:
            """Authenticate and admit this call; return its per-message check, if any."""
            principal, refusal = self._authenticate(context.invocation_metadata())
            if refusal is None and principal is not None:
                refusal = _admission(principal, rule, method)
            if refusal is not None:
                await context.abort(*refusal)
            PRINCIPAL.set(principal)
            return _message_check(principal, rule)

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def authorized(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                check = await admit(context)
                if check is None:
                    return await behavior(request, context)
                if handler.request_streaming:
                    guarded = checked_read_context(context, check)
                    return await behavior(checked_requests(request, context, check), guarded)
                await check(request, context)
                return await behavior(request, context)

            return authorized

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def authorized(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                check = await admit(context)
                if check is None:
                    responses = behavior(request, context)
                elif handler.request_streaming:
                    guarded = checked_read_context(context, check)
                    responses = behavior(checked_requests(request, context, check), guarded)
                else:
                    await check(request, context)
                    responses = behavior(request, context)
                async for response in responses:
                    yield response

            return authorized

        return wrap_handler(handler, unary, stream)

    def _authenticate(
        self, metadata: Any
    ) -> tuple[Principal | None, tuple[grpc.StatusCode, str] | None]:
        value, count = _authorization(metadata)
        if count > 1:
            return None, (grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header")
        try:
            return self._policy.validator.validate_authorization(value), None
        except InvalidToken as exc:
            return None, (grpc.StatusCode.UNAUTHENTICATED, str(exc))


def _admission(
    principal: Principal, rule: MethodRule | None, method: str
) -> tuple[grpc.StatusCode, str] | None:
    """Method-level decision, before any message is read."""
    if rule is None:
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed"
    if principal.kind == "service":
        if principal.has_scope(rule.scope):
            return None
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} needs scope {rule.scope}"
    if rule.driver_id_of is None:
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed for driver tokens"
    return None


def _message_check(
    principal: Principal | None, rule: MethodRule | None
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]] | None:
    """For driver tokens, a check that each message names the token's own driver id."""
    if principal is None or principal.kind != "driver" or rule is None:
        return None
    driver_id_of = rule.driver_id_of
    if driver_id_of is None:
        return None
    own = principal.subject

    async def check(message: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        named = driver_id_of(message)
        if named is not None and named != own:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "a driver token may act only for its own driver id",
            )

    return check
