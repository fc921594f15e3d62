"""The server's call pipeline, built from the service's settings."""

from __future__ import annotations

import logging

import grpc

from driver_service.interceptors.access_log import ACCESS_LOG_ERRORS, ACCESS_LOG_OFF, AccessLog
from driver_service.interceptors.auth import AuthPolicy
from driver_service.interceptors.pipeline import CallPipeline
from driver_service.observability.metrics.catalogue import ServiceMetrics


def call_pipeline(
    auth: AuthPolicy | None,
    logger: logging.Logger | None = None,
    *,
    access_log: str = "all",
    metrics: ServiceMetrics | None = None,
) -> CallPipeline:
    """The CallPipeline for these settings.

    `auth=None` (only for `--insecure` development) skips authentication entirely.
    `access_log` is "all" (a line per call), "errors" (calls that did not end OK) or "off";
    `metrics`, when given, receives go-grpc-prometheus series for every call.
    """
    log = (
        None
        if access_log == ACCESS_LOG_OFF
        else AccessLog(logger, errors_only=access_log == ACCESS_LOG_ERRORS)
    )
    return CallPipeline(auth=auth, access_log=log, metrics=metrics)


def server_interceptors(
    auth: AuthPolicy | None,
    logger: logging.Logger | None = None,
    *,
    access_log: str = "all",
    metrics: ServiceMetrics | None = None,
) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """`call_pipeline(...)` as `grpc.aio.server(interceptors=...)` takes it (the server
    itself registers its services through `CallPipeline.around` instead)."""
    return [call_pipeline(auth, logger, access_log=access_log, metrics=metrics)]
