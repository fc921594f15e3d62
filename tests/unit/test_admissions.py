"""Admissions remembers a caller's decisions by its header, and never beyond what a fresh
decision would give: expiry, a repeated header, other methods and other drivers' messages
are decided as if nothing were remembered."""

from __future__ import annotations

import time

import grpc

from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service.api.rules import RULES
from driver_service.interceptors.auth import Admissions, AuthPolicy
from driver_service.security.tokens import TokenIssuer, TokenValidator

SECRET = b"unit-test-secret-that-is-32-bytes+"
GET_DRIVER = "/driver.v1.DriverService/GetDriver"
UPLOAD = "/driver.v1.DriverService/UploadLocations"
ISSUER = TokenIssuer.from_secret(SECRET)


def admissions(max_callers: int = Admissions.MAX_CALLERS) -> Admissions:
    validator = TokenValidator.from_secret(SECRET, leeway_s=0.0)
    return Admissions(AuthPolicy(validator, RULES), max_callers)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def code(decision: tuple[object, object, tuple[grpc.StatusCode, str] | None]) -> object:
    return None if decision[2] is None else decision[2][0]


def test_a_remembered_caller_is_refused_once_its_token_expires() -> None:
    gate = admissions()
    issued = time.time()
    header = bearer(ISSUER.issue("svc", scopes=["drivers:read"], ttl_s=1.0, now=issued))
    principal, _, refusal = gate.decide(header, 1, GET_DRIVER, RULES[GET_DRIVER])
    assert principal is not None
    assert refusal is None
    assert gate.decide(header, 1, GET_DRIVER, RULES[GET_DRIVER]) == (principal, None, None)
    time.sleep(max(0.0, int(issued + 1.0) + 0.02 - time.time()))  # past `exp` (whole seconds)
    principal, _, refusal = gate.decide(header, 1, GET_DRIVER, RULES[GET_DRIVER])
    assert principal is None
    assert refusal == (grpc.StatusCode.UNAUTHENTICATED, "token has expired")


def test_each_method_is_decided_for_the_remembered_caller() -> None:
    gate = admissions()
    header = bearer(ISSUER.issue_service(["drivers:read"]))
    assert code(gate.decide(header, 1, GET_DRIVER, RULES[GET_DRIVER])) is None
    refused = gate.decide(header, 1, UPLOAD, RULES[UPLOAD])
    assert code(refused) == grpc.StatusCode.PERMISSION_DENIED
    assert code(gate.decide(header, 1, GET_DRIVER, RULES[GET_DRIVER])) is None
    assert (
        code(gate.decide(header, 1, "/x.Unknown/Call", None)) == grpc.StatusCode.PERMISSION_DENIED
    )


def test_a_remembered_driver_is_still_checked_on_every_message() -> None:
    gate = admissions()
    header = bearer(ISSUER.issue_driver("d-1"))
    for _ in range(2):  # decided, then remembered
        principal, check, refusal = gate.decide(header, 1, UPLOAD, RULES[UPLOAD])
        assert principal is not None
        assert principal.subject == "d-1"
        assert refusal is None
        assert check is not None
        assert check(pb.LocationUpdate(driver_id="d-1")) is None
        assert code((None, None, check(pb.LocationUpdate(driver_id="d-2")))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )


def test_repeated_missing_and_invalid_headers_are_refused_every_time() -> None:
    gate = admissions()
    header = bearer(ISSUER.issue_service(["drivers:read"]))
    assert code(gate.decide(header, 1, GET_DRIVER, RULES[GET_DRIVER])) is None
    twice = gate.decide(header, 2, GET_DRIVER, RULES[GET_DRIVER])
    assert twice == (
        None,
        None,
        (grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header"),
    )
    assert code(gate.decide(None, 0, GET_DRIVER, RULES[GET_DRIVER])) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    forged = header[:-3] + ("AAA" if not header.endswith("AAA") else "BBB")
    for _ in range(2):
        assert code(gate.decide(forged, 1, GET_DRIVER, RULES[GET_DRIVER])) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


def test_callers_are_bounded_oldest_first() -> None:
    gate = admissions(max_callers=3)
    headers = [bearer(ISSUER.issue_driver(f"d-{n}")) for n in range(5)]
    for header in headers:
        gate.decide(header, 1, GET_DRIVER, RULES[GET_DRIVER])
    assert list(gate._callers) == headers[2:]


class _CountedHeader(str):
    """A header value that counts how often it is hashed (each lookup by it, once per call:
    grpc hands every call a new string)."""

    hashed = 0

    def __hash__(self) -> int:
        _CountedHeader.hashed += 1
        return super().__hash__()


def test_the_last_caller_is_found_without_hashing_its_header_again() -> None:
    gate = admissions()
    header = bearer(ISSUER.issue_service(["drivers:read"]))
    first = gate.decide(_CountedHeader(header), 1, GET_DRIVER, RULES[GET_DRIVER])
    _CountedHeader.hashed = 0
    for _ in range(3):
        again = gate.decide(_CountedHeader(header), 1, GET_DRIVER, RULES[GET_DRIVER])
        assert again == first
    assert _CountedHeader.hashed == 0


def test_alternating_callers_each_get_their_own_decision() -> None:
    gate = admissions()
    reader = bearer(ISSUER.issue_service(["drivers:read"]))
    driver = bearer(ISSUER.issue_driver("d-1"))
    for _ in range(3):
        principal, check, refusal = gate.decide(reader, 1, UPLOAD, RULES[UPLOAD])
        assert principal is not None
        assert principal.kind == "service"
        assert (check, code((None, None, refusal))) == (None, grpc.StatusCode.PERMISSION_DENIED)
        principal, check, refusal = gate.decide(driver, 1, UPLOAD, RULES[UPLOAD])
        assert principal is not None
        assert principal.subject == "d-1"
        assert refusal is None
        assert check is not None
