"""The server's interceptor chain, in the one order that makes each concern see the others."""

from __future__ import annotations

import logging

import grpc

from driver_service.interceptors.auth import AuthInterceptor, AuthPolicy
from driver_service.interceptors.decoding import DecodingInterceptor
from driver_service.interceptors.logging import LoggingInterceptor
from driver_service.interceptors.recovery import RecoveryInterceptor
from driver_service.interceptors.request_id import RequestIdInterceptor


def server_interceptors(
    auth: AuthPolicy | None,
    logger: logging.Logger | None = None,
    *,
    access_log: str = "all",
) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """recovery → decoding → request id → logging → auth (→ metrics, appended by the caller).

    Recovery is outermost so nothing escapes as a raw exception; the request id is set before
    logging reads it; logging sees auth refusals with their codes. `auth=None` (only for
    `--insecure` development) skips authentication entirely. `access_log` is "all" (a line
    per call), "errors" (calls that did not end OK) or "off".
    """
    chain: list[grpc.aio.ServerInterceptor] = [  # type: ignore[type-arg]
        RecoveryInterceptor(),
        DecodingInterceptor(),
        RequestIdInterceptor(),
    ]
    if access_log != "off":
        chain.append(LoggingInterceptor(logger, errors_only=access_log == "errors"))
    if auth is not None:
        chain.append(AuthInterceptor(auth))
    # Metrics hook slot: the metrics interceptor is appended here (innermost) by the lead.
    return chain
