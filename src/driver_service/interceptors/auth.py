"""Who may call what: every call (unary and streaming) is authenticated with a bearer JWT
and authorized per method, and each incoming message of a stream is checked before the
handler sees it (the call pipeline applies these decisions; this module makes them).

The rules themselves (who may call each method) are one table in api/rules.py. A method
without a rule is denied (deny by default); exempt services (health, reflection) are chosen by
configuration and can never include driver.v1.

Validation comes before authorization: a malformed driver id (empty, too long, bad
characters) names no driver, so the per-driver check lets it through and the handler's
validation answers it exactly as it does for any other token (INVALID_ARGUMENT with the
same message; on an upload stream, an invalid update counted and dropped). It cannot act for
another driver: every stored driver id is valid, and every handler validates before acting.

On a stream, the first message naming a foreign driver ends the call with PERMISSION_DENIED:
that message and every later one never reach the handler, so none of them is stored.
Updates of the same stream accepted *before* the violation were already queued for commit
and may be persisted; they were legitimate, the caller's own driver id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import grpc

from driver_service.domain import InvalidInput, validate_driver_id
from driver_service.interceptors.selector import ExemptServices
from driver_service.observability.context import CALL, SCOPE_PRINCIPAL
from driver_service.security.tokens import InvalidToken, Principal, TokenValidator

AUTHORIZATION_HEADER = "authorization"

#: Why a call or a message is refused: the status code and a message the caller can act on.
Refusal = tuple[grpc.StatusCode, str]
#: Checks one incoming message of a stream; a refusal ends the call at that message.
MessageCheck = Callable[[Any], Refusal | None]
FOREIGN_DRIVER: Refusal = (
    grpc.StatusCode.PERMISSION_DENIED,
    "a driver token may act only for its own driver id",
)


def current_principal() -> Principal | None:
    """The authenticated caller of the current call (None outside a call or on exempt
    services), kept in the call's scope (observability.context)."""
    return cast("Principal | None", CALL.get()[SCOPE_PRINCIPAL])


def set_principal(principal: Principal) -> None:
    """Make `principal` the current call's caller (in a new scope: the current one may be
    shared with the code that set it)."""
    scope = CALL.get().copy()
    scope[SCOPE_PRINCIPAL] = principal
    CALL.set(scope)


#: Returns the driver id a request message acts on, or None if it names none (heartbeat, or
#: a malformed id: see named_driver_id).
DriverIdOf = Callable[[Any], str | None]


def named_driver_id(driver_id: str) -> str | None:
    """The driver an id from a request names, None if the id is malformed: such a request
    is the handler's to refuse as invalid (the same answer whatever the token), not a
    foreign driver's."""
    try:
        return validate_driver_id(driver_id)
    except InvalidInput:
        return None


@dataclass(frozen=True, slots=True)
class MethodRule:
    """Who may call one method: services with `scope`; drivers, if `driver_id_of` is set,
    only for messages that name their own id."""

    scope: str
    driver_id_of: DriverIdOf | None = None


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """How calls are authenticated and authorized; built once at start. `rules` is the
    table by method path (the server's is api/rules.py RULES); a method not in it is denied."""

    validator: TokenValidator
    rules: Mapping[str, MethodRule]
    exempt: ExemptServices = field(default_factory=ExemptServices.of)


def authenticate(
    policy: AuthPolicy, authorization: str | None, count: int
) -> tuple[Principal | None, Refusal | None]:
    """The caller's principal from its `authorization` header values (`count` of them)."""
    if count > 1:
        return None, (grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header")
    try:
        return policy.validator.validate_authorization(authorization), None
    except InvalidToken as exc:
        return None, (grpc.StatusCode.UNAUTHENTICATED, str(exc))


def admission(principal: Principal, rule: MethodRule | None, method: str) -> Refusal | None:
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


def message_check(principal: Principal | None, rule: MethodRule | None) -> MessageCheck | None:
    """For driver tokens, a check that each message names the token's own driver id."""
    if principal is None or principal.kind != "driver" or rule is None:
        return None
    driver_id_of = rule.driver_id_of
    if driver_id_of is None:
        return None
    own = principal.subject

    def check(message: Any) -> Refusal | None:
        named = driver_id_of(message)
        if named is not None and named != own:
            return FOREIGN_DRIVER
        return None

    return check


#: What was decided for one call: the caller's principal (None if unauthenticated), the
#: per-message check (driver tokens) and why the call is refused, if it is.
Decision = tuple[Principal | None, MessageCheck | None, Refusal | None]
#: A remembered caller: usable until (wall clock), its principal, decisions by method.
_Caller = tuple[float, Principal, dict[str, Decision]]


class Admissions:
    """`authenticate`, `admission` and `message_check` for one call, remembered per caller
    (its whole `authorization` value) and method for as long as the token's verification is
    reused (TokenValidator's cache: until `exp` plus leeway, at most CACHE_SECONDS). A client
    sends the same header on every call; parsing it, finding the token and deciding again
    cost a GetDriver ~10 k instructions (of ~400 k), a repeat caller's lookup here ~3 k.
    Refusals of the token itself (missing, repeated, malformed, invalid) are never kept.
    The last caller is kept aside too: comparing a ~360-character header with it costs ~0.1 k
    where hashing it for the lookup costs ~1.2 k (each call's header is a new string), and a
    server's traffic comes mostly from few callers (BENCHMARKS.md, issue 20)."""

    MAX_CALLERS = 10_000

    __slots__ = ("_callers", "_last", "_max_callers", "policy")

    def __init__(self, policy: AuthPolicy, max_callers: int = MAX_CALLERS) -> None:
        self.policy = policy
        self._max_callers = max_callers
        #: Header value -> (usable until, principal, decisions by method).
        self._callers: dict[str, _Caller] = {}
        #: The header of the last call that had one, and its caller's entry.
        self._last: tuple[str, _Caller] | None = None

    def decide(
        self, authorization: str | None, count: int, method: str, rule: MethodRule | None
    ) -> Decision:
        """The decision for a call of `method` (whose rule is `rule`) that carried `count`
        authorization headers, the first `authorization`."""
        if count != 1 or authorization is None:
            return None, None, authenticate(self.policy, authorization, count)[1]
        last = self._last
        if last is not None and authorization == last[0]:
            caller: _Caller | None = last[1]
        else:
            caller = self._callers.get(authorization)
            if caller is not None:
                self._last = (authorization, caller)
        if caller is None or time.time() >= caller[0]:
            try:
                principal, until = self.policy.validator.authorization_principal(authorization)
            except InvalidToken as exc:
                return None, None, (grpc.StatusCode.UNAUTHENTICATED, str(exc))
            callers = self._callers
            callers.pop(authorization, None)
            if len(callers) >= self._max_callers:
                del callers[next(iter(callers))]  # the oldest caller
            caller = callers[authorization] = (until, principal, {})
            self._last = (authorization, caller)
        decided = caller[2].get(method)
        if decided is None:
            principal = caller[1]
            decided = caller[2][method] = (
                principal,
                message_check(principal, rule),
                admission(principal, rule, method),
            )
        return decided
