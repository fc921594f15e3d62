"""Server interceptors, one concern per module, applying to all four RPC kinds."""

from driver_service.interceptors.auth import (
    DEFAULT_RULES,
    AuthInterceptor,
    AuthPolicy,
    MethodRule,
    current_principal,
)
from driver_service.interceptors.chain import server_interceptors
from driver_service.interceptors.logging import LoggingInterceptor
from driver_service.interceptors.recovery import RecoveryInterceptor
from driver_service.interceptors.request_id import (
    REQUEST_ID_HEADER,
    RequestIdFilter,
    RequestIdInterceptor,
    current_request_id,
)
from driver_service.interceptors.selector import DEFAULT_EXEMPT, ExemptServices

__all__ = [
    "DEFAULT_EXEMPT",
    "DEFAULT_RULES",
    "REQUEST_ID_HEADER",
    "AuthInterceptor",
    "AuthPolicy",
    "ExemptServices",
    "LoggingInterceptor",
    "MethodRule",
    "RecoveryInterceptor",
    "RequestIdFilter",
    "RequestIdInterceptor",
    "current_principal",
    "current_request_id",
    "server_interceptors",
]
