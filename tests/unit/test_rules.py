"""One table of every RPC and its authorization rule: every method of every service of ours
has exactly one rule in api/rules.py, and a method without a rule is denied."""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter

import grpc
from google.protobuf.descriptor import ServiceDescriptor

import driver_service._gen.driver.v1 as generated
from driver_service.api.rules import ENTRIES, RULES, SERVICES
from driver_service.interceptors.auth import admission, message_check
from driver_service.interceptors.selector import DEFAULT_EXEMPT, ExemptServices
from driver_service.security.tokens import SCOPE_DISPATCH, SCOPE_READ, SCOPE_WRITE, Principal


def our_services() -> list[ServiceDescriptor]:
    """Every service in our generated protos: the server registers these (DispatchService
    when dispatch is on); a new one must come with its rules."""
    services: list[ServiceDescriptor] = []
    for info in pkgutil.iter_modules(generated.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"{generated.__name__}.{info.name}")
            services.extend(module.DESCRIPTOR.services_by_name.values())
    return services


def method_paths(services: list[ServiceDescriptor]) -> list[str]:
    return [f"/{s.full_name}/{m.name}" for s in services for m in s.methods]


def test_every_method_of_every_service_has_exactly_one_rule() -> None:
    written = Counter(f"/{service.full_name}/{method}" for service, method, _ in ENTRIES)
    assert [path for path, count in written.items() if count != 1] == []
    assert sorted(written) == sorted(method_paths(our_services()))
    assert sorted(RULES) == sorted(written)


def test_the_table_names_every_service_of_ours() -> None:
    assert sorted(s.full_name for s in SERVICES) == sorted(s.full_name for s in our_services())


def test_health_and_reflection_are_exempt_not_ruled() -> None:
    """They skip auth by configuration (--auth-exempt); driver.v1 can never be exempt."""
    exempt = ExemptServices.of(DEFAULT_EXEMPT)
    assert not any(exempt.exempt(path) for path in RULES)


def test_a_method_without_a_rule_is_denied_even_with_every_scope() -> None:
    everything = Principal("service", "ops", frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_DISPATCH}))
    driver = Principal("driver", "d1")
    for principal in (everything, driver):
        refusal = admission(principal, RULES.get("/driver.v1.DriverService/NoSuchMethod"), "m")
        assert refusal is not None
        assert refusal[0] is grpc.StatusCode.PERMISSION_DENIED
    assert message_check(driver, None) is None


def test_http_only_routes_are_ruled_in_the_same_module_and_closed_to_drivers() -> None:
    """The fleet listing and stream mirror no RPC: their rules sit beside the RPCs' and no
    driver token passes them, not even one naming no other driver."""
    from driver_service.api.rules import HTTP_ENTRIES, HTTP_RULES

    assert [route for route, _ in HTTP_ENTRIES] == ["GET /v1/drivers", "GET /v1/fleet:stream"]
    assert sorted(HTTP_RULES) == sorted(route for route, _ in HTTP_ENTRIES)
    assert not set(HTTP_RULES) & set(RULES)
    driver = Principal("driver", "d1")
    reader = Principal("service", "map", frozenset({SCOPE_READ}))
    dispatcher = Principal("service", "ops", frozenset({SCOPE_DISPATCH, SCOPE_WRITE}))
    for route, rule in HTTP_RULES.items():
        assert admission(reader, rule, route) is None
        for refused in (driver, dispatcher):
            refusal = admission(refused, rule, route)
            assert refusal is not None
            assert refusal[0] is grpc.StatusCode.PERMISSION_DENIED
