"""Prometheus metrics of one server, on a registry of its own, cheap on the hot path.

The gRPC series carry go-grpc-prometheus's names, labels and code strings, so existing
dashboards and alerts work unchanged. Everything else is prefixed `driver_service_`.
`ServiceMetrics` is created by the composition root (never at import time), so several
servers and tests in one process never share or collide on series. Every per-call and
per-update metric is a plain-Python instrument updated without a lock on the event-loop thread
(`LoopCounter`, `LoopGauge`, `LoopHistogram`), rendered by a collector at scrape time exactly
as prometheus_client renders its own, minus the `_created` series (go-grpc-prometheus has none).

The package: `grpc_labels` (go-grpc-prometheus's label values), `core` (the lock-free
instruments and their collectors), `catalogue` (every series the server exports, in
`ServiceMetrics`), `instrumented` (the repository and bus decorators that time the ports).

Example::

    metrics = ServiceMetrics()
    repository = InstrumentedRepository(await SqliteRepository.open(path), metrics)
    bus = InstrumentedBus(MemoryBus(), metrics)
    server = grpc.aio.server(interceptors=server_interceptors(auth, metrics=metrics))
    body, content_type = metrics.render()
"""
