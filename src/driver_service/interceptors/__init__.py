"""The server's per-call concerns (request ids, auth, decoding, metrics, recovery, access
log), applied to all four RPC kinds by one CallPipeline interceptor."""

from driver_service.interceptors.access_log import AccessLog
from driver_service.interceptors.auth import (
    AuthPolicy,
    MethodRule,
    current_principal,
)
from driver_service.interceptors.chain import call_pipeline, server_interceptors
from driver_service.interceptors.pipeline import CallPipeline
from driver_service.interceptors.request_id import REQUEST_ID_HEADER
from driver_service.interceptors.selector import DEFAULT_EXEMPT, ExemptServices
from driver_service.observability.context import RequestIdFilter, current_request_id

__all__ = [
    "DEFAULT_EXEMPT",
    "REQUEST_ID_HEADER",
    "AccessLog",
    "AuthPolicy",
    "CallPipeline",
    "ExemptServices",
    "MethodRule",
    "RequestIdFilter",
    "call_pipeline",
    "current_principal",
    "current_request_id",
    "server_interceptors",
]
