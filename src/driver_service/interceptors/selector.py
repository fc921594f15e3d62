"""Which calls an interceptor applies to: by service name, with driver.v1 never exempt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PROTECTED_PACKAGE = "driver.v1."
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
DEFAULT_EXEMPT = (HEALTH_SERVICE, *REFLECTION_SERVICES)


def service_of(method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service` ("" if the path is not of that form)."""
    service, _, name = method.lstrip("/").partition("/")
    return service if name else ""


@dataclass(frozen=True, slots=True)
class ExemptServices:
    """Services whose calls skip an interceptor (e.g. health and reflection skip auth)."""

    services: frozenset[str]

    @classmethod
    def of(cls, services: Iterable[str] = DEFAULT_EXEMPT) -> ExemptServices:
        names = frozenset(s.strip() for s in services if s.strip())
        forbidden = sorted(n for n in names if n.startswith(PROTECTED_PACKAGE))
        if forbidden:
            raise ValueError(f"driver.v1 services can never be exempt: {', '.join(forbidden)}")
        return cls(names)

    def exempt(self, method: str) -> bool:
        service = service_of(method)
        return (
            bool(service) and service in self.services and not service.startswith(PROTECTED_PACKAGE)
        )
